"""One meaning per option name across every command (src/vitscope/cli/options_table.py), old spellings accepted but
hidden from --help, messages in the spelling typed, --threads, and docs/options.md generated from the table."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app
from vitscope.cli.options_table import OPTIONS, canonical, commands, lookup, markdown, old_spellings, options_of

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = commands(app)


def _help(*command: str) -> str:
    """``vitscope COMMAND --help`` on a terminal wide enough that no option name is cut."""
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, [*command, "--help"]).output


def _visible(param) -> list[str]:
    old = set(old_spellings(param))
    return [o for o in [*param.opts, *param.secondary_opts] if o not in old]


def test_every_command_is_walked():
    names = [n for n, _ in COMMANDS]
    assert {"extract", "attention", "knn", "probe", "sae train", "sae eval", "run"} <= set(names)
    assert len(names) == len(set(names)) > 40


def test_a_short_flag_means_one_option_everywhere():
    seen = defaultdict(set)
    for name, cmd in COMMANDS:
        for p in options_of(cmd):
            for o in _visible(p):
                if not o.startswith("--"):
                    seen[o].add(canonical(p))
                    entry = lookup(canonical(p))
                    assert entry is not None and entry.short == o, (name, o, canonical(p))
    clashes = {s: longs for s, longs in seen.items() if len(longs) > 1}
    assert not clashes, clashes
    # where a command has an option with a short flag, it has the flag too (unless an old spelling holds it there)
    for name, cmd in COMMANDS:
        taken = {o for p in options_of(cmd) for o in p.opts}
        for p in options_of(cmd):
            entry = lookup(canonical(p))
            if entry is not None and entry.short:
                assert entry.short in p.opts or entry.short in taken, (name, canonical(p), entry.short)


def test_a_name_shared_by_commands_is_in_the_table():
    users = defaultdict(set)
    for name, cmd in COMMANDS:
        for p in options_of(cmd):
            for o in _visible(p):
                if o.startswith("--"):
                    users[o].add(name)
    shared = {o for o, cmds in users.items() if len(cmds) > 1}
    missing = sorted(o for o in shared if lookup(o) is None)
    assert not missing, f"options of several commands need one meaning in options_table.OPTIONS: {missing}"


def test_each_option_shows_one_name_and_the_same_kind_everywhere():
    kinds = defaultdict(set)
    for name, cmd in COMMANDS:
        for p in options_of(cmd):
            old = set(old_spellings(p))
            on = [o for o in p.opts if o.startswith("--") and o not in old]
            off = [o for o in p.secondary_opts if o not in old]
            assert len(on) == 1 and len(off) <= 1, (name, p.opts, p.secondary_opts)   # one name (and its "off")
            entry = lookup(canonical(p))
            if entry is not None:
                assert set(on + off) <= {entry.name, entry.negation}, (name, on + off, entry.name)
            if entry is not None:
                kinds[entry.name].add(bool(p.is_flag))
    assert not {n: k for n, k in kinds.items() if len(k) > 1}, "an option is a flag in one command, a value in another"


def test_old_spellings_are_the_tables_and_unambiguous_in_each_command():
    for name, cmd in COMMANDS:
        spellings = [o for p in options_of(cmd) for o in [*p.opts, *p.secondary_opts]]
        assert len(spellings) == len(set(spellings)), (name, sorted(s for s in spellings if spellings.count(s) > 1))
        for p in options_of(cmd):
            assert canonical(p) not in old_spellings(p), (name, canonical(p))
    used = {(lookup(canonical(p)).name, o) for _, cmd in COMMANDS for p in options_of(cmd) for o in old_spellings(p)}
    for entry in OPTIONS:
        for o in entry.old:
            assert (entry.name, o) in used, f"{o} is listed as an old spelling of {entry.name} but no command takes it"


def test_every_table_entry_is_used():
    names = {o for _, cmd in COMMANDS for p in options_of(cmd) for o in _visible(p)}
    assert not [e.name for e in OPTIONS if e.name not in names]
    assert not [e.short for e in OPTIONS if e.short and e.short not in names]


def _sample(param):
    """Arguments for ``param`` and the values they may parse to ("3" reads as a number, a string or a path)."""
    return ([], {"True"}) if param.is_flag else (["3"], {"3", "3.0"})


def test_old_spellings_still_parse_to_the_same_option():
    checked = 0
    for name, cmd in COMMANDS:
        for p in options_of(cmd):
            for o in old_spellings(p):
                args, want = _sample(p)
                if o in p.secondary_opts:
                    args, want = [], {"False"}
                ctx = cmd.make_context(name, [o, *args], resilient_parsing=True)
                got = ctx.params[p.name]
                got = got[0] if isinstance(got, (list, tuple)) else got
                assert str(got) in want, (name, o, got)
                checked += 1
    assert checked >= 30


def test_help_shows_canonical_names_and_hides_old_spellings():
    for name, cmd in COMMANDS:
        olds = {o for p in options_of(cmd) for o in old_spellings(p)}
        if not olds:
            continue
        text = _help(*name.split())
        words = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", text))
        for p in options_of(cmd):
            assert canonical(p) in words, (name, canonical(p))
        shown = {o for o in olds if o in words and not any(o in _visible(p) for p in options_of(cmd))}
        assert not shown, (name, shown)


def test_renamed_options_in_help():
    """The names chosen for the clashes the table settles, as a user reads them in --help."""
    help_of = _help
    assert "--ridge-alpha" in help_of("probe-tokens") and "--alpha " not in help_of("probe-tokens")
    assert "--significance" in help_of("probe-stats") and "--comparisons" in help_of("probe-stats")
    assert "--clusters" in help_of("cluster") and "--k " not in help_of("cluster")
    assert "--train-data" in help_of("knn") and "--train " not in help_of("knn")
    assert "--blocks" in help_of("extract") and "--layers" not in help_of("extract")
    assert "--with-random" in help_of("logit-lens") and "random-baseline" not in help_of("logit-lens")
    assert "--parts" in help_of("synth") and "--formats" not in help_of("synth")


def _error(runner, *args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code != 0
    return str(r.exception)


def test_messages_name_the_spelling_typed():
    runner = CliRunner()
    # options checked before any model is loaded
    assert "--top-memories must be a positive integer, got 0" in _error(runner, "memories", "-m", "demo-vit",
                                                                        "--top-memories", "0")
    assert "--k must be a positive integer, got 0" in _error(runner, "memories", "-m", "demo-vit", "--k", "0")
    assert "--num-heads must be a positive integer" in _error(runner, "probe", "--store", "x", "--num-heads", "0")
    assert "--heads must be a positive integer" in _error(runner, "probe", "--store", "x", "--heads", "0")
    # the old spelling of one option brings its partner's old spelling with it
    assert "--train SPEC --test SPEC" in _error(runner, "knn", "-m", "demo-vit", "--train", "x")
    assert "--train-data SPEC --test-data SPEC" in _error(runner, "knn", "-m", "demo-vit", "--train-data", "x")


@pytest.mark.parametrize("typed,other", [("--clusters", "--k"), ("--k", "--clusters")])
def test_a_bad_value_names_one_spelling(typed, other):
    """click names every spelling of an option in a bad-value message ('--clusters' / '--k'): only the typed one."""
    r = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["cluster", "demo-vit", typed, "x"])
    assert r.exit_code != 0 and f"'{typed}'" in r.output and f"'{other}'" not in r.output, r.output


def test_threads(monkeypatch):
    import torch

    from vitscope.cli import common

    runner = CliRunner()
    assert "--threads must be >= 1, got 0" in _error(runner, "inspect", "demo-vit", "--threads", "0")
    r = runner.invoke(app, ["models", "--threads", "2"])
    assert r.exit_code != 0 and "No such option" in r.output           # no torch work, no --threads
    before = torch.get_num_threads()
    n = 2 if before == 1 else 1
    seen = []
    with common.threads_limited(n):
        seen.append(torch.get_num_threads())
    assert seen == [n] and torch.get_num_threads() == before
    # the command runs inside the limit and gets no `threads` argument
    monkeypatch.setattr(common, "threads_limited", lambda n: _record(seen, n))
    r = runner.invoke(app, ["inspect", "demo-vit", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert seen[-1] == ("entered", 1)


def _record(seen, n):
    import contextlib

    @contextlib.contextmanager
    def cm():
        seen.append(("entered", n))
        yield

    return cm()


def test_options_page_is_up_to_date():
    page = ROOT / "docs" / "options.md"
    assert page.read_text() == markdown(app), "run python scripts/make_options_table.py"


@pytest.mark.parametrize("command, unit", [
    ("knn", "percentages"), ("retrieval", "percentages"), ("keypoints", "percentages"), ("memories", "percentages"),
    ("ablate", "percentages"), ("probe", "fractions (0-1)"), ("probe-e2e", "fractions (0-1)"),
    ("probe-tokens", "fractions (0-1)"), ("removal", "fractions (0-1)"), ("logit-lens", "fractions (0-1)"),
    ("perturb", "fractions (0-1)"),
])
def test_help_says_the_unit_of_the_table(command, unit):
    text = " ".join(_help(command).split())
    assert unit in text
    assert f"`{command}`" in (ROOT / "docs" / "options.md").read_text().split("Units of the tables")[1]
