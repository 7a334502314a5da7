"""Metrics as Prometheus reads them: a `/metrics` endpoint scraped over HTTP and parsed by
prometheus_client's own parser of the text format."""

from __future__ import annotations

import urllib.request

from prometheus_client import parser

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]  # (sample name, labels) -> value


def scrape(url: str) -> Samples:
    """Every sample `url` serves now (histograms as their `_bucket`, `_count`, `_sum`)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in parser.text_string_to_metric_families(text)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, None when absent."""
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample named `name`."""
    return [dict(labels) for sample, labels in samples if sample == name]
