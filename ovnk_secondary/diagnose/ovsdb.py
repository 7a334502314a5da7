"""One-shot OVSDB queries (RFC 7047 `transact` with `select`), for reading a few rows by name
without downloading a whole database as an IDL would (python-ovs' JSON-RPC and streams: tcp,
ssl, unix; comma-separated remotes are tried in order, as for a clustered database)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ovs.jsonrpc
import ovs.stream

from ovnk_secondary import errors

TIMEOUT_MS = 10_000


def set_tls(*, private_key: str, certificate: str, ca_cert: str) -> None:
    """The files of ssl: remotes (python-ovs keeps them per process)."""
    ovs.stream.Stream.ssl_set_private_key_file(private_key)
    ovs.stream.Stream.ssl_set_certificate_file(certificate)
    ovs.stream.Stream.ssl_set_ca_cert_file(ca_cert)


def value(datum: Any) -> Any:
    """An OVSDB JSON value as Python: maps -> dict, sets -> list, uuids -> str."""
    if isinstance(datum, list) and len(datum) == 2 and isinstance(datum[0], str):
        kind, content = datum
        if kind == "map":
            return {value(k): value(v) for k, v in content}
        if kind == "set":
            return [value(item) for item in content]
        if kind in ("uuid", "named-uuid"):
            return content
    return datum


def select(remote: str, database: str, table: str, where: Sequence[Sequence[Any]],
           columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of `table` matching `where` (RFC 7047 conditions), with `columns` decoded.

    Raises errors.Unavailable when no remote answers, errors.InvalidConfig for a refused query.
    """
    problems = []
    for member in (r.strip() for r in remote.split(",") if r.strip()):
        error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(member),
                                                     TIMEOUT_MS)
        if error:
            problems.append(f"{member}: {os.strerror(error)}")
            continue
        connection = ovs.jsonrpc.Connection(stream)
        try:
            request = ovs.jsonrpc.Message.create_request("transact", [database, {
                "op": "select", "table": table, "where": [list(c) for c in where],
                "columns": list(columns)}])
            error, reply = connection.transact_block(request)
        finally:
            connection.close()
        if error:
            problems.append(f"{member}: {os.strerror(error)}")
            continue
        if reply.error is not None:
            raise errors.InvalidConfig(f"{database} at {member} refused the query: {reply.error}")
        result = reply.result[0]
        if "error" in result:
            raise errors.InvalidConfig(f"{database} at {member}: {result['error']}: "
                                       f"{result.get('details', '')}")
        return [{c: value(row.get(c)) for c in columns} for row in result["rows"]]
    raise errors.Unavailable(f"cannot reach {database} at {remote}: {'; '.join(problems)}")
