"""Operability settings of a node config and metrics: endpoint off by default, bounded labels,
addresses and NATS URLs checked at load."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from hub.errors import ConfigError
from node.config import NodeConfig, ObservabilitySection
from node.observability import NodeMetrics, module_of, parse_listen


def test_the_endpoint_is_off_unless_listen_is_set() -> None:
    cfg = NodeConfig.model_validate({"node": {"site": "hereon"}})
    assert cfg.observability.listen == ""


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "node-1.example.org:80"])
def test_listen_takes_host_and_port(listen: str) -> None:
    assert ObservabilitySection(listen=listen).listen == listen
    assert parse_listen(listen)[1] in (9464, 80)


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1", "127.0.0.1:port", "a b:1"])
def test_a_listen_value_that_is_not_host_and_port_is_refused(listen: str) -> None:
    with pytest.raises(ValidationError):
        ObservabilitySection(listen=listen)
    with pytest.raises(ConfigError):
        parse_listen(listen)


def test_module_and_outcome_labels_stay_bounded() -> None:
    metrics = NodeMetrics(["climate"])
    metrics.call_finished("climate", "completed", 0.01)
    metrics.call_finished("someone_elses", "rejected", 0.001)
    metrics.call_finished(None, "made-up-state", -1.0)
    metrics.transfer_bytes(1000, "in")
    labels = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "fedhub_calls_total" and s.value:
                labels.add((s.labels["module"], s.labels["outcome"]))
            if s.name == "fedhub_transfer_bytes_total" and s.labels["direction"] == "in":
                assert s.value == 1000
    assert labels == {("climate", "completed"), ("unknown", "rejected"), ("unknown", "other")}


def test_the_module_of_a_call_subject_is_its_fourth_token() -> None:
    assert module_of("fh.call.hereon.climate.scale") == "climate"
    assert module_of("fh.call.hereon.climate.Station.describe") == "climate"
    assert module_of("fh.call.hereon") is None


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "tls://u:p@hub.example.org:4443", "localhost:4222", ""]
)
def test_nats_urls_nats_py_can_use_are_accepted(url: str) -> None:
    cfg = NodeConfig.model_validate({"node": {"site": "hereon"}, "nats": {"url": url}})
    assert cfg.nats.url == url


@pytest.mark.parametrize("url", ["http://x:4222", "nats://127.0.0.1:port", "nats://", "a b"])
def test_a_nats_url_with_a_typo_is_refused_at_load(url: str) -> None:
    with pytest.raises(ValidationError, match="not a NATS server URL"):
        NodeConfig.model_validate({"node": {"site": "hereon"}, "nats": {"url": url}})
