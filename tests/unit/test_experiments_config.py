"""Study files: validation errors name the file and the line; entries expand as documented."""
import textwrap

import pytest

from vitscope.experiments.config import ConfigError, load_study, parse_study

GOOD = """\
study: s
models:
  - demo-vit
  - {name: demo-vit-reg4, with_random: true}
datasets:
  - {name: shapes, data: "synthetic:n=16", limit: 8, train: "synthetic:n=16,split=train"}
analyses:
  - attention_distance
  - name: cluster
    options: {k: 4, tokens: mean}
"""


def _err(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_study(textwrap.dedent(text), "study.yaml")
    return str(e.value)


def test_good_study_resolves_defaults_and_twins():
    s = parse_study(GOOD, "study.yaml")
    assert [m.label for m in s.models] == ["demo-vit", "demo-vit-reg4", "demo-vit-reg4 (random)"]
    assert [m.random for m in s.models] == [False, False, True]
    assert s.datasets[0].limit == 8 and s.datasets[0].train.endswith("split=train")
    cl = s.analyses[1]
    assert cl.kind == "cluster" and cl.options["k"] == 4 and cl.options["tokens"] == "mean"
    assert cl.options["n_init"] == 10                                   # a default filled in
    assert s.features == {"site": "resid_post", "dtype": "float32", "batch_size": 64, "nproc_per_node": 1}


@pytest.mark.parametrize("text,line,words", [
    # unknown top-level key, with a suggestion
    (GOOD.replace("analyses:", "analysis:"), 7, ["unknown key 'analysis'", "did you mean 'analyses'"]),
    # unknown analysis name on line 8
    (GOOD.replace("  - attention_distance", "  - attention_distanse"), 8,
     ["unknown analysis 'attention_distanse'", "did you mean 'attention_distance'"]),
    # an option the analysis does not have (line 10)
    (GOOD.replace("{k: 4, tokens: mean}", "{kk: 4}"), 10, ["cluster has no option 'kk'", "did you mean 'k'"]),
    # wrong type
    (GOOD.replace("{k: 4, tokens: mean}", "{k: four}"), 10, ["option 'k' of cluster must be an integer"]),
    # a value outside the choices
    (GOOD.replace("tokens: mean", "tokens: patches"), 10, ["option 'tokens' of cluster takes cls, mean"]),
    # a model key that does not exist (line 4)
    (GOOD.replace("with_random: true", "with_randm: true"), 4, ["unknown key 'with_randm'"]),
    # a bad limit (line 6)
    (GOOD.replace("limit: 8", "limit: -1"), 6, ["'limit' must be an integer >= 1"]),
    # the same key twice
    (GOOD.replace("study: s\n", "study: s\nstudy: t\n"), 2, ["'study' is given twice (first on line 1)"]),
    # a YAML syntax error
    (GOOD.replace("  - demo-vit\n", "  - demo-vit: [\n"), 4, ["invalid YAML"]),
    # a missing section
    ("study: s\nmodels: [demo-vit]\ndatasets: [synthetic]\n", 1, ["missing 'analyses'"]),
    # two models with one label
    (GOOD.replace("  - demo-vit\n", "  - demo-vit\n  - demo-vit\n"), 4, ["two models are labelled 'demo-vit'"]),
    # the same analysis twice without a label
    (GOOD + "  - attention_distance\n", 11, ["analysis 'attention_distance' appears twice", "label"]),
    # a selection that names no model of the study
    (GOOD + "  - {name: saliency, models: [demo-vt]}\n", 11, ["'demo-vt' is not one of the study's models"]),
    # a bad feature dtype
    (GOOD + "features: {dtype: float64}\n", 11, ["'dtype' takes float32, float16 or bfloat16"]),
])
def test_errors_name_the_line(text, line, words):
    msg = _err(text)
    assert msg.startswith(f"study.yaml:{line}:"), msg
    for w in words:
        assert w in msg, msg


def test_knn_without_train_split_is_an_error_at_its_line(tmp_path):
    from vitscope.experiments.cells import expand

    p = tmp_path / "s.yaml"
    p.write_text(GOOD.replace(', train: "synthetic:n=16,split=train"', "") + "  - knn\n")
    with pytest.raises(ConfigError, match=r"s.yaml:11: knn needs a train split"):
        expand(load_study(p))


def test_load_study_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_study(tmp_path / "missing.yaml")
    p = tmp_path / "s.toml"
    p.write_text("x")
    with pytest.raises(ValueError, match="YAML"):
        load_study(p)
    p = tmp_path / "s.yaml"
    p.write_text(GOOD + "plugins: [nothere.py]\n")
    with pytest.raises(ConfigError, match=r"s.yaml:11: cannot import plugin"):
        load_study(p)
