"""`vitscope keypoints`: --seed seeds the random twins (as in every command), --pair-seed the pair sample."""
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app


class _Stop(Exception):
    pass


@pytest.fixture
def calls(monkeypatch):
    import vitscope.analysis.correspondence as corr
    import vitscope.cli.common as common

    seen = {}

    def fake_load_models(names, random, device, seed=0, with_random=False):
        seen["twin_seed"] = seed
        return []

    def fake_evaluate(models, folder, opts):
        seen["pair_seed"] = opts.seed
        raise _Stop

    monkeypatch.setattr(common, "load_models", fake_load_models)
    monkeypatch.setattr(corr, "evaluate", fake_evaluate)
    return seen


@pytest.mark.parametrize("args,twin,pairs", [([], 0, 42), (["--seed", "3"], 3, 42), (["--pair-seed", "7"], 0, 7),
                                             (["--model-seed", "5", "--pair-seed", "1"], 5, 1)])
def test_seed_flags(calls, tmp_path, args, twin, pairs):
    r = CliRunner().invoke(app, ["keypoints", "-m", "demo-vit", "--with-random", "--spair", "synthetic:pairs=4",
                                 "-o", str(tmp_path / "kp"), *args])
    assert isinstance(r.exception, _Stop), r.output
    assert calls == {"twin_seed": twin, "pair_seed": pairs}
