"""scripts/time_examples.py reads each timed example from its page as written: every one must still be there."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import time_examples as te  # noqa: E402


@pytest.mark.parametrize("name,page,start", te.EXAMPLES, ids=[e[0] for e in te.EXAMPLES])
def test_every_timed_example_is_on_its_page(name, page, start):
    cmd = te.find(REPO, page, start)
    assert cmd.startswith("vitscope ") and "$" not in cmd        # variables of the page expanded


def test_page_commands_joins_lines_and_expands_variables(tmp_path):
    page = tmp_path / "p.md"
    page.write_text('text\n```bash\nD="synthetic:n=4"\nvitscope knn -d "$D,split=test" \\\n'
                    '    -o runs/knn      # a comment\n```\n```python\nvitscope not-a-command\n```\n')
    assert te.page_commands(page) == ['vitscope knn -d "synthetic:n=4,split=test" -o runs/knn']
    with pytest.raises(ValueError, match="no command starting with"):
        te.find(tmp_path, "p.md", "vitscope probe")
