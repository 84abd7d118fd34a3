"""The emulator's shape: independent of the library's models, its state split by concern behind one facade that
shares one lock, no oversized class without a written reason, and the state file's class named for what it is."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from pathlib import Path

from cscapi.emulator import EmulatorConfig
from cscapi.emulator.state import EmulatorState

EMULATOR = Path(__file__).resolve().parents[1] / "src" / "cscapi" / "emulator"
#: What the emulator may borrow from the library: errors, time helpers and the spec files, never the models.
_ALLOWED = {"cscapi.errors", "cscapi.timeutil", "cscapi._spec"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_emulator_imports_nothing_of_the_library_but_errors_time_and_spec() -> None:
    for path in EMULATOR.rglob("*.py"):
        borrowed = {m for m in _imports(path) if m.startswith("cscapi") and not m.startswith("cscapi.emulator")}
        assert borrowed <= _ALLOWED, (path, borrowed - _ALLOWED)
    code = (
        "import sys, cscapi.emulator.app, cscapi.emulator.admin_api, cscapi.emulator.embedded; "
        "print(sorted(m for m in sys.modules if m.startswith('cscapi.') and not m.startswith('cscapi.emulator')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    loaded = set(ast.literal_eval(proc.stdout.strip()))
    assert loaded <= _ALLOWED | {"cscapi._version"}, (loaded, proc.stderr)


def test_no_emulator_class_is_oversized_without_a_reason_in_its_docstring() -> None:
    for path in EMULATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            methods = sum(isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef)) for x in node.body)
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if methods > 25 or lines > 400:
                doc = ast.get_docstring(node) or ""
                assert "Why" in doc or "facade" in doc, (path.name, node.name, methods, lines)


def test_every_part_shares_the_facades_lock_and_state_file() -> None:
    state = EmulatorState(EmulatorConfig(community_size=5))
    parts = [state.accounts, state.community, state.lists, state.streams, state.faults_part, state.inbox]
    assert all(part.ctx.lock is state.lock for part in parts)
    assert len({id(part.ctx) for part in parts}) == 1
    assert isinstance(state.lock, type(threading.RLock()))


def test_every_public_method_of_the_facade_says_what_it_does() -> None:
    import inspect

    bare = [
        n for n, f in vars(EmulatorState).items() if inspect.isfunction(f) and not n.startswith("_") and not f.__doc__
    ]
    assert bare == []
    assert EmulatorState.register.__doc__ == "Create a machine; 409 if the id is taken."


def test_the_facades_attributes_are_the_parts_data() -> None:
    state = EmulatorState(EmulatorConfig(community_size=5))
    state.register("m1", "password-1")
    assert state.machines is state.accounts.machines and "m1" in state.machines
    assert state.decisions is state.community.decisions and len(state.decisions) == 5
    assert state.faults is state.faults_part.specs
    state.internal_errors = 3
    assert state.faults_part.internal_errors == 3 and state.summary()["internal_errors"] == 3
    state.reset()
    assert state.machines == {} and state.machines is state.accounts.machines and state.internal_errors == 0


def test_the_state_file_class_is_named_for_what_it_is_and_the_old_name_still_imports() -> None:
    from cscapi.emulator.persistence import SQLiteStore, StateFile
    from cscapi.remediation.stores.sqlite import SQLiteStore as EngineStore

    assert SQLiteStore is StateFile and StateFile is not EngineStore
