"""Write docs/options.md, the command line's one table of options, from src/vitscope/cli/options_table.py.

    python scripts/make_options_table.py            # rewrite docs/options.md
    python scripts/make_options_table.py --check    # exit 1 when docs/options.md is out of date
"""
from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def main(argv: list[str]) -> int:
    from vitscope.cli.main import app
    from vitscope.cli.options_table import markdown

    text = markdown(app)
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python scripts/make_options_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
