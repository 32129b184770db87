"""--with-random (a random-weight twin of every model, seeded by --seed) reaches the model loader in every command
that compares several models, and the removal curves' --train-data / --train-limit keep their old spellings."""
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app


class _Stop(Exception):
    pass


@pytest.fixture
def loads(monkeypatch):
    import vitscope.cli.common as common

    seen = []

    def fake(names, random, device, seed=0, with_random=False):
        seen.append({"with_random": with_random, "seed": seed})
        raise _Stop

    monkeypatch.setattr(common, "load_models", fake)
    return seen


D = "builtin:demo?n=4"
COMMANDS = {
    "perturb": ["perturb", "-m", "demo-vit", "-d", D],
    "attribution": ["attribution", "-m", "demo-vit", "-d", D],
    "removal": ["removal", "-m", "demo-vit", "-d", D],
    "probe-tokens": ["probe-tokens", "-m", "demo-vit", "-d", D, "--train-data", D],
    "knn": ["knn", "-m", "demo-vit", "-d", "builtin:demo?n=16"],
    "davis": ["davis", "-m", "demo-vit", "--davis", "synthetic:videos=1,frames=3"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag,expected", [([], False), (["--with-random", "--seed", "4"], True)])
def test_with_random_reaches_the_loader(loads, tmp_path, name, flag, expected):
    r = CliRunner().invoke(app, [*COMMANDS[name], "-o", str(tmp_path / "o"), *flag])
    assert isinstance(r.exception, _Stop), r.output
    assert loads[-1]["with_random"] is expected and loads[-1]["seed"] == (4 if expected else 0)


@pytest.mark.parametrize("spelling", [["--train-data", D, "--train-limit", "2"], ["--probe-data", D, "--probe-limit", "2"]])
def test_removal_train_data_spellings(monkeypatch, tmp_path, spelling):
    import vitscope.analysis.class_embedding.removal as rem
    import vitscope.cli.common as common

    seen = {}
    monkeypatch.setattr(common, "load_models", lambda *a, **k: {})

    def fake_evaluate(models, data, opts, probe_data=None, log=None):
        seen.update(probe_data=probe_data, probe_limit=opts.probe_limit, orders=opts.orders)
        raise _Stop

    monkeypatch.setattr(rem, "evaluate", fake_evaluate)
    r = CliRunner().invoke(app, ["removal", "-m", "demo-vit", "-d", D, "-o", str(tmp_path / "o"), *spelling])
    assert isinstance(r.exception, _Stop), r.output
    assert seen["probe_data"] == D and seen["probe_limit"] == 2 and "probe" in seen["orders"]
