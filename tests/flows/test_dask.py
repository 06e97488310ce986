"""The Dask runner on a real loopback cluster gives the threads runner's release, byte for byte."""

from __future__ import annotations

from pathlib import Path

from curation.atomic import sha256_file
from curation.config import load_config
from tests.flows.conftest import CuratedDemo, write_demo_config


def test_dask_cluster_release_equals_threads_release(
    tmp_path: Path, curated_demo: CuratedDemo, prefect_api_url: str
) -> None:
    from distributed import Client, LocalCluster
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.flows import run_curate

    def servers_started_here() -> list[str]:
        # Run on each worker (a nested function is shipped by value).
        from prefect.server.api.server import SubprocessASGIServer

        return [s.api_url for s in SubprocessASGIServer._instances.values() if s.running]

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        config_path = write_demo_config(tmp_path, runner="dask", workers=2, dask_address=cluster.scheduler_address)
        summary = run_curate(str(config_path))
        worker_pids = client.run(lambda: __import__("os").getpid())
        servers = client.run(servers_started_here)

    config = load_config(config_path)
    assert summary.failed == 0
    assert summary.released == curated_demo.summary.released
    assert sha256_file(config.release.zip_path) == curated_demo.zip_sha256
    assert len(worker_pids) == 2
    assert all(urls == [] for urls in servers.values()), f"workers started their own Prefect servers: {servers}"

    # The per-case task runs ran on the workers and reported to the flow's server.
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary.flow_run_id]))
        )
    names = [t.name for t in task_runs]
    studies = summary.converted + sum(summary.rejected.values())
    assert sum(n.startswith("case-") for n in names) == studies  # one task per case: all its stages
    assert all(t.state is not None and t.state.is_completed() for t in task_runs)
