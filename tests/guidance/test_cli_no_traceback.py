"""No tracebacks anywhere in the CLI (issue 21): every sub-command, found by walking the
argparse parser (a new command or option is covered without editing this file), is given
bad outputs (a missing parent folder, a folder where a file is expected, a file where a
folder is expected, a read-only folder), missing inputs and unparsable values; each must
exit with status 2 and one line naming the path and the problem, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from guidance.cli.main import build_parser, main
from guidance.io.paths import PATH_KINDS
from tests.peers import require_module

REPO = Path(__file__).resolve().parents[2]

#: Option names that hold a path: each must be declared with ``path_arg`` (so that it is
#: checked before the command runs), whatever command it belongs to.
PATH_LIKE = re.compile(r"(^|_)(out|json|png|record|plot|cache|ct|labels|label_names|config|"
                       r"plan|load|input|pivot|model|calibration|screenshot|save_poses|"
                       r"write_inputs|file|dir|path)$")


def _commands(parser: argparse.ArgumentParser,
              prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                              argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*prefix, name))


COMMANDS = dict(_commands(build_parser()))


def _name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _kind(action: argparse.Action) -> str | None:
    return getattr(action.type, "path_kind", None)


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(
        action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """A good file and folder, a file and a folder to misuse, a read-only folder."""
    good_file = tmp_path / "good.json"
    good_file.write_text("{}")
    good_dir = tmp_path / "good-dir"
    good_dir.mkdir()
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root writes anywhere: use a folder nobody can
        read_only = Path("/proc/sys")
    yield {"good_file": good_file, "good_dir": good_dir, "a_file": a_file, "a_dir": a_dir,
           "read_only": read_only, "root": tmp_path}
    (tmp_path / "read-only").chmod(0o755)


def _value_for(action: argparse.Action, places: dict[str, Path]) -> str:
    """A value the parser accepts and the path check passes."""
    kind = _kind(action)
    if kind is not None:
        return str(places["good_dir"] if kind in ("input_dir", "output_dir")
                   else places["good_file"] if kind.startswith("input")
                   else places["root"] / "new-output.json")
    if action.choices:
        return str(next(iter(action.choices)))
    for candidate in ("1", "47995", "127.0.0.1:9", "GUIDANCE@127.0.0.1:9", "x"):
        if _accepts(action, candidate):
            return candidate
    raise AssertionError(f"no value found for {_name(action)}: add a candidate here")


def _accepts(action: argparse.Action, text: str) -> bool:
    if action.type is None:
        return True
    try:
        action.type(text)  # type: ignore[operator]
    except (argparse.ArgumentTypeError, TypeError, ValueError):
        return False
    return True


def _required(parser: argparse.ArgumentParser, skip: argparse.Action | None,
              places: dict[str, Path]) -> list[str]:
    """Arguments that make the command line complete apart from ``skip``."""
    argv: list[str] = []
    grouped = set()
    for group in parser._mutually_exclusive_groups:
        if group.required:
            grouped.update(id(a) for a in group._group_actions)
            if not any(a is skip for a in group._group_actions):
                first = group._group_actions[0]
                argv += [first.option_strings[-1], _value_for(first, places)]
    for action in parser._actions:
        if action is skip or id(action) in grouped or not action.required:
            continue
        value = _value_for(action, places)
        argv += [_name(action), value] if action.option_strings else [value]
    return argv


def _argv(command: tuple[str, ...], action: argparse.Action, value: str,
          places: dict[str, Path]) -> list[str]:
    parser = COMMANDS[command]
    rest = _required(parser, action, places)
    own = [_name(action), value] if action.option_strings else [value]
    return [*command, *own, *rest]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _refusal(err: str, command: str) -> str:
    """The one line of ``err``: ``guidance COMMAND[ KIND]: error: ...``."""
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip()]
    assert len(lines) == 1, err
    assert re.match(r"guidance( [\w-]+)*: error: ", lines[0]), err
    assert lines[0].startswith(f"guidance {command}".strip()), err
    return lines[0]


#: Bad values per path kind: (label, path under the fixture's places, words expected).
BAD: dict[str, list[tuple[str, str, str]]] = {
    "output_file": [("missing_parent", "root/no-such-folder/x.out", "does not exist"),
                    ("a_folder", "a_dir", "is a folder"),
                    ("under_a_file", "a_file/x.out", "is not a folder"),
                    ("read_only_folder", "read_only/x.out", "not writable")],
    "output_dir": [("missing_parent", "root/no-such-folder/sub", "does not exist"),
                   ("a_file", "a_file", "not a folder"),
                   ("under_a_file", "a_file/sub", "is a file"),
                   ("read_only_folder", "read_only/sub", "not writable")],
    "input_file": [("missing", "root/no-such-input.json", "no such file"),
                   ("a_folder", "a_dir", "is a folder")],
    "input_path": [("missing", "root/no-such-input", "no such file or folder")],
    "input_dir": [("missing", "root/no-such-folder", "no such folder"),
                  ("a_file", "a_file", "not a folder")],
}


def _cases() -> Iterator[tuple[tuple[str, ...], str, str, str, str]]:
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            kind = _kind(action)
            for label, where, words in BAD.get(kind or "", []):
                if label == "missing_parent" and getattr(action.type, "parents", False):
                    continue  # a cache: its missing parents are created
                yield command, _name(action), label, where, words


CASES = list(_cases())


def test_every_path_option_of_every_command_is_checked() -> None:
    assert set(BAD) == set(PATH_KINDS)
    assert len(COMMANDS) >= 15 and ("calibrate", "register") in COMMANDS
    unchecked = [f"{' '.join(cmd)} {_name(a)}" for cmd, p in COMMANDS.items()
                 for a in p._actions if _takes_value(a) and _kind(a) is None
                 and (a.type is Path or PATH_LIKE.search(a.dest))]
    assert not unchecked, f"declare these with guidance.cli.common.path_arg: {unchecked}"
    assert {c[0] for c in CASES} == {c for c, p in COMMANDS.items()
                                     if any(_kind(a) for a in p._actions)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("command", "option", "label", "where", "words"), CASES,
                         ids=[f"{' '.join(c[0])} {c[1]} {c[2]}" for c in CASES])
def test_bad_path_exits_2_with_one_line_before_anything_runs(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str], command: tuple[str, ...],
        option: str, label: str, where: str, words: str) -> None:
    head, _, tail = where.partition("/")
    path = places[head] / tail if tail else places[head]
    action = next(a for a in COMMANDS[command]._actions if _name(a) == option)
    argv = _argv(command, action, str(path), places)
    capsys.readouterr()
    assert _exit_code(argv) == 2, argv
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    line = _refusal(captured.err, command[0])
    assert f"{option} {path}: " in line and words in line, line
    assert captured.out == ""  # refused before the command started


#: Values of which a typed option's parser is expected to refuse at least one.
UNPARSABLE = ("not-a-value", "", "-1", "x" * 300, "1e999", "0")


def _typed_cases() -> Iterator[tuple[tuple[str, ...], str, str]]:
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            if (_takes_value(action) and action.option_strings and action.type is not None
                    and _kind(action) is None and not action.choices):
                bad = next((v for v in UNPARSABLE if not _accepts(action, v)), None)
                if bad is not None:
                    yield command, _name(action), bad


TYPED = list(_typed_cases())


@pytest.mark.parametrize(("command", "option", "value"), TYPED,
                         ids=[f"{' '.join(c)} {o}" for c, o, _ in TYPED])
def test_unparsable_value_exits_2_with_one_line(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str], command: tuple[str, ...],
        option: str, value: str) -> None:
    action = next(a for a in COMMANDS[command]._actions if _name(a) == option)
    argv = _argv(command, action, value, places)
    capsys.readouterr()
    assert _exit_code(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert option in _refusal(err, command[0])


FLOATS = [(c, o) for c, o, _ in TYPED
          if next(a for a in COMMANDS[c]._actions if _name(a) == o).type is float]


@pytest.mark.parametrize(("command", "option"), FLOATS,
                         ids=[f"{' '.join(c)} {o}" for c, o in FLOATS])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_number_exits_2_before_anything_runs(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str], command: tuple[str, ...],
        option: str, value: str) -> None:
    action = next(a for a in COMMANDS[command]._actions if _name(a) == option)
    capsys.readouterr()
    assert _exit_code(_argv(command, action, value, places)) == 2
    captured = capsys.readouterr()
    assert f"{option}: expected a finite number" in _refusal(captured.err, command[0])
    assert captured.out == ""


@pytest.mark.parametrize("command", list(COMMANDS), ids=[" ".join(c) for c in COMMANDS])
def test_unknown_option_and_missing_required_exit_2(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str],
        command: tuple[str, ...]) -> None:
    parser = COMMANDS[command]
    complete = _required(parser, None, places)
    assert _exit_code([*command, *complete, "--no-such-option", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--no-such-option" in _refusal(err, "")
    if any(a.required for a in parser._actions) or any(
            g.required for g in parser._mutually_exclusive_groups):
        assert _exit_code(list(command)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "required" in err


# -- inputs that exist but are not what they claim to be ------------------------------------


def _garbage(root: Path) -> Path:
    p = root / "garbage.bin"
    p.write_bytes(b"\x00\xffnot what it claims\x89PNG" * 10)
    return p


#: Every input option of every command, given a file of garbage with the rest of a
#: command line that reaches the reading of that file: refused with exit 2, one line
#: naming the file. Options whose files are covered by tests/guidance/test_broken_inputs.py
#: (a corpus of damaged CTs, label maps, plans, configs, calibrations) are listed there.
GARBAGE: dict[tuple[tuple[str, ...], str], list[str]] = {
    (("replay",), "file"): ["--to", "127.0.0.1:9"],
    (("eval",), "--model"): ["--modality", "us"],
    # (folders: a file given where a folder of images or labels is expected; damaged
    # images and labels inside them: tests/guidance/test_site_eval.py)
    (("eval",), "--images"): ["--modality", "us", "--labels", "{root}"],
    (("eval",), "--labels"): ["--modality", "us", "--images", "{root}"],
    (("bench",), "--model"): ["--stage", "segment", "--sizes", "64"],
    (("simulate",), "--plan"): ["--tracked", "--modality", "none", "--write-inputs",
                                "{root}/room"],
    (("calibrate", "spin"), "--pivot"): ["--input", "{good_input}"],
    (("plan",), "--label-names"): ["--target", "0,0,0", "--entry", "30,-50,0"],
    (("plan",), "--load"): ["--gui", "--screenshot", "{root}/s.png"],
}
IN_CORPUS = {
    (("run",), "--config"), (("run",), "--plan"), (("run",), "--calibration"),
    (("plan",), "--ct"), (("plan",), "--labels"), (("plan",), "--config"),
    (("verify",), "--plan"), (("verify",), "--ct"), (("verify",), "--labels"),
    (("verify",), "--label-names"),
    *((cmd, "--input") for cmd in COMMANDS if cmd[0] == "calibrate"),
}
#: Inputs that are not read before talking to another system: each file is sent or
#: refused by the PACS, one outcome per file (tests/guidance/test_pacs.py).
NOT_READ_HERE = {(("pacs", "store"), "paths")}


def test_every_input_option_is_given_garbage_somewhere() -> None:
    inputs = {(cmd, _name(a)) for cmd, p in COMMANDS.items() for a in p._actions
              if (_kind(a) or "").startswith("input")}
    missing = inputs - set(GARBAGE) - IN_CORPUS - NOT_READ_HERE
    assert not missing, f"give these a garbage file in GARBAGE: {sorted(missing)}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "option"), list(GARBAGE),
                         ids=[f"{' '.join(c)} {o}" for c, o in GARBAGE])
def test_garbage_input_file_exits_2_with_one_line(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], option: str) -> None:
    if "--gui" in GARBAGE[(command, option)]:
        require_module("PyQt5", "PyQt5 (a dependency)")
        runtime = places["root"] / "xdg"  # else Qt says on stderr that it has none
        runtime.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    root = places["root"]
    garbage = _garbage(root)
    good_input = root / "spin.json"
    good_input.write_text(json.dumps({"poses": [np.eye(4).tolist()] * 3}))
    rest = [a.format(root=root, good_input=good_input) for a in GARBAGE[(command, option)]]
    own = [option, str(garbage)] if option.startswith("-") else [str(garbage)]
    capsys.readouterr()
    assert _exit_code([*command, *own, *rest]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = _refusal(err, command[0])
    assert "garbage.bin" in line, line


# -- the two reported cases, from a real process ----------------------------------------------


def test_reported_cases_from_a_real_process(places: dict[str, Path]) -> None:
    """``plan --out /nonexistent/dir/p.json`` (was FileNotFoundError) and ``verify --out
    EXISTING_FILE`` (was FileExistsError)."""
    plan = places["good_file"]
    missing = places["root"] / "nonexistent" / "dir"
    for argv, words in (
            (["plan", "--target", "0,0,0", "--auto", "--out", f"{missing}/p.json"],
             f"--out {missing}/p.json: folder {missing} does not exist"),
            (["verify", "--plan", str(plan), "--ct", "real", "--out", str(places["a_file"])],
             f"--out {places['a_file']}: exists and is not a folder")):
        proc = subprocess.run([sys.executable, "-m", "guidance", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert words in _refusal(proc.stderr, argv[0])
