"""The project's exceptions: one small hierarchy.

Every message says what was wrong and what to do about it, because it ends up in front of a
person: as a Kubernetes Event, a CNI error object or one line on a terminal.
"""


class OvnkSecondaryError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidConfig(OvnkSecondaryError):
    """A NAD, a network selection, a flag or a file is not valid; the message says how to fix it."""


class SandboxError(OvnkSecondaryError):
    """The OVN sandbox cannot be built, started, reached or torn down."""


class IpamError(OvnkSecondaryError):
    """No address can be allocated (pool exhausted) or a requested address is not available."""


class NorthboundError(OvnkSecondaryError):
    """The OVN northbound database cannot be reached or refused a transaction."""


class Unavailable(OvnkSecondaryError):
    """A service the node agent depends on (Kubernetes API, local OVSDB) cannot be reached now."""
