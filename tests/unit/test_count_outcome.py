"""Outcome metrics: added in Lambda, skipped when local_runner disables metrics."""

from aws_lambda_powertools import Metrics

from policy_sync.pipeline import count_outcome


def test_count_outcome_adds_metric(monkeypatch):
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    metrics = Metrics(namespace="PolicySyncTest", service="unit")
    metrics.clear_metrics()

    count_outcome(metrics, "applied")
    count_outcome(metrics, "retry", 3)

    assert metrics.metric_set["applied"]["Value"] == [1.0]
    assert metrics.metric_set["retry"]["Value"] == [3.0]
    metrics.clear_metrics()


def test_count_outcome_skipped_when_metrics_disabled(monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    metrics = Metrics(namespace="PolicySyncTest", service="unit")
    metrics.clear_metrics()

    for _ in range(150):
        count_outcome(metrics, "applied")

    assert metrics.metric_set == {}
