"""daemon/tiers/backends.py without a cloud: what the GCS backend keeps per worker thread."""

from __future__ import annotations

import threading
from typing import Any

from daemon.tiers.backends import _GcsBackend, _Secrets
from dfs.core.tiers import TierSpec


class FakeClient:
    """Stands in for google.cloud.storage.Client: counts what is made and closed."""

    made = 0
    closed = 0

    def __init__(self) -> None:
        FakeClient.made += 1

    def bucket(self, name: str) -> Any:
        return (self, name)

    def close(self) -> None:
        FakeClient.closed += 1


def test_clients_of_threads_that_ended_are_closed_not_kept() -> None:
    """Each worker thread gets its own client; the daemon's threads come and go, and a client
    whose thread ended is closed when another is made (kept, there was one per thread ever)."""
    FakeClient.made = FakeClient.closed = 0
    backend = _GcsBackend(TierSpec(name="g", kind="gcs", bucket="my-bucket"), FakeClient, _Secrets())
    for _ in range(20):  # one short-lived worker thread per burst of tier calls
        thread = threading.Thread(target=backend._bucket)
        thread.start()
        thread.join()
    backend._bucket()  # this thread's: the last ended thread's client goes now
    assert FakeClient.made == 21
    assert len(backend._clients) == 1
    assert FakeClient.closed == 20
    backend.close()
    assert FakeClient.closed == 21 and backend._clients == []
