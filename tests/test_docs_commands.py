"""Every command quoted in README.md and the docs/ pages still parses: an entry point's with
``--print_config`` (its LightningCLI reads every option and config file without training), any other
script's options against its ``--help``. A renamed script or option fails here, not in a reader's shell."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "RESULTS.md")]
ENTRY_POINTS = {"train", "depth_prune", "width_prune", "fit_budget"}
SCRIPT = re.compile(r"^(?:uv run |python )?(experiments/\S+\.py)(.*)$")


def quoted_commands(page: Path) -> list[str]:
    """The commands of a page's ``bash`` blocks (continuations joined, comments dropped) and of its inline
    code spans that run a script of ``experiments/``."""
    text = page.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands.append(re.sub(r"\s+#.*$", "", line).strip())
    commands += re.findall(r"`((?:uv run |python )experiments/[^`]+)`", text)
    return [c for c in commands if SCRIPT.match(c) and "$" not in c]


def split(command: str) -> tuple[str, list[str]]:
    script, rest = SCRIPT.match(command).groups()
    return script, shlex.split(re.sub(r"<[^>]*>", "X", rest))


CASES = [(page.relative_to(REPO).as_posix(), command) for page in PAGES for command in quoted_commands(page)]


def test_the_pages_quote_commands() -> None:
    scripts = {split(command)[0] for _, command in CASES}
    assert {"experiments/depth_prune.py", "experiments/width_prune.py", "experiments/train.py"} <= scripts


@pytest.mark.parametrize(("page", "command"), CASES, ids=[f"{p}:{c[:60]}" for p, c in CASES])
def test_a_quoted_command_parses(page: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    script, args = split(command)
    assert (REPO / script).is_file(), f"{page} quotes {script}, which does not exist"
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    if Path(script).stem in ENTRY_POINTS:
        with pytest.raises(SystemExit) as done:
            module.main([*args, "--print_config"])
        assert done.value.code in (None, 0), f"{page}: {command}\n{capsys.readouterr().err[-1500:]}"
        return
    with pytest.raises(SystemExit):
        module.main(["--help"])
    help_text = capsys.readouterr().out
    own = args[: args.index("--")] if "--" in args else args  # after "--": the arguments of a child command
    for option in (a.split("=", 1)[0] for a in own if a.startswith("--")):
        assert option in help_text, f"{page}: {script} has no option {option}"
