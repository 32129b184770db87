import pytest

from _slurm import SlurmCluster, missing


@pytest.fixture
def slurm_cluster(tmp_path_factory, monkeypatch):
    """A private one-node SLURM cluster without accounting (tests/integration/_slurm.py), stopped after the test;
    ``SLURM_CONF`` points this process and its children (sbatch, squeue, submitit) at it."""
    why = missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    for k, v in cluster.env().items():
        monkeypatch.setenv(k, v)
    yield cluster
    cluster.stop()
