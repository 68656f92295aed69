"""The package layout holds: each sub-package imports only what its docstring allows, and no
module imports itself back through others (issue 13: a flat room of thirty modules, and cycles).

Imports are read from the source (every import, those inside functions too: a lazy import is a
dependency all the same), so the test needs nothing to be importable.
"""

import ast
import re
from pathlib import Path

import voicechat

APP = Path(voicechat.__file__).parent
# Packages Django defines the shape of; they are wiring, not rooms of the architecture.
DJANGO_PACKAGES = {"management", "migrations", "templatetags", "tests"}
# The app's core: the modules every package may import.
CORE = {"enums", "lifecycle", "models", "protocol", "redaction", "services"}
# The app's wiring: Django's entry points, which import whatever they wire together.
WIRING = {"__init__", "admin", "apps", "checks", "routing"}


def sub_packages() -> list[str]:
    return sorted(
        path.parent.name
        for path in APP.glob("*/__init__.py")
        if path.parent.name not in DJANGO_PACKAGES
    )


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in APP.rglob("*.py")
        if not DJANGO_PACKAGES & set(path.relative_to(APP).parts[:-1])
    }


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """The voicechat modules `path` imports (a package's name when no module of it is named)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("voicechat"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("voicechat"))
    return found


def package_of(module: str) -> str | None:
    """The sub-package a module belongs to; None for the app's core and wiring."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (APP / parts[1] / "__init__.py").exists()):
        return parts[1]
    return None


def allowed_imports(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((APP / package / "__init__.py").read_text())) or ""
    match = re.search(r"May import:(.*)", doc, re.S)
    assert match, f"voicechat/{package}/__init__.py must say what it may import ('May import:')"
    named = set(re.findall(r"voicechat\.(\w+)", match.group(1)))
    assert named <= set(sub_packages()) | CORE, f"{package} names an unknown package: {named}"
    return named - CORE


def test_the_app_root_holds_only_its_core_and_wiring():
    root_modules = {path.stem for path in APP.glob("*.py")}
    assert root_modules == CORE | WIRING, (
        "a new module belongs in the sub-package of its concern: "
        f"{sorted(root_modules - CORE - WIRING)}"
    )


def test_every_sub_package_imports_only_what_its_docstring_allows():
    modules = source_modules()
    for package in sub_packages():
        allowed = allowed_imports(package)
        for module, path in modules.items():
            if package_of(module) != package:
                continue
            for target in imported_modules(path, modules):
                other = package_of(target)
                if other is None:
                    assert target.split(".")[-1] in CORE, f"{module} imports wiring: {target}"
                elif other != package:
                    assert other in allowed, f"{module} imports {target}; {package} may not"


def test_the_sub_packages_form_layers():
    """The allowed imports have no cycle, so every package can be read bottom-up."""
    allowed = {package: allowed_imports(package) for package in sub_packages()}
    done: set[str] = set()
    while len(done) < len(allowed):
        ready = {package for package, needs in allowed.items() if needs <= done} - done
        assert ready, f"the packages' allowed imports form a cycle: {sorted(set(allowed) - done)}"
        done |= ready


def test_no_module_imports_itself_back():
    modules = source_modules()
    graph = {
        module: imported_modules(path, modules) & modules.keys() for module, path in modules.items()
    }

    def reaches(start: str, goal: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, trail = stack.pop()
            for target in graph[module]:
                if target == goal:
                    return [*trail, target]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
        return None

    for module in modules:
        cycle = reaches(module, module)
        assert cycle is None, "import cycle: " + " -> ".join(cycle)
