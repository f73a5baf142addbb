"""The package and the benchmarks import in layers, without circles.

The graph is read from the source with :mod:`ast`, nothing is imported: every ``import`` and
``from ... import`` counts, those under ``if TYPE_CHECKING:`` and inside functions too (an
import that only the type checker or a late call runs still ties the two modules together).
``from a.b import c`` imports the module ``a.b.c`` when there is one, else ``a.b``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The repository root: the folder of pyproject.toml.
REPOSITORY = next(
    folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").is_file()
)
PACKAGE, BENCHMARKS, TESTS = "civitai_spider", "benchmarks", "tests"
_WHO = {PACKAGE: "package's modules", BENCHMARKS: "benchmarks"}  # for the messages

#: The layers of civitai_spider, lowest first: a module may import its own layer or a lower
#: one. A name is a module or a package (``stores`` covers every module in civitai_spider/stores/);
#: ``__init__`` is civitai_spider/__init__.py.
PACKAGE_LAYERS: tuple[tuple[str, ...], ...] = (
    # 0. The foundation: outcomes, settings, items, the API's and the media's helpers, the
    # arguments' queries, chains, the item filter, captions and the job; everything builds on these.
    ("__init__", "outcomes", "errors", "local_files", "settings", "setting_values", "logformatter")
    + ("api", "items")
    + ("imaging", "video", "captions", "site_url", "query", "chains", "item_filter", "job")
    + ("cdn_width", "manifest_rows"),
    # 1. Scrapy extensions: stops, stats, progress (a store that keeps failing stops the crawl).
    ("extensions",),
    # 2. Where a crawl keeps its files and ids: folder, S3, id file, Redis, and their failures.
    ("stores",),
    # 3. What is checked before a crawl (every component's settings), the downloader
    # middlewares (the id lookup asks the id store) and the download handler.
    ("setting_rules", "middlewares", "download_handler"),
    # 4. What the crawl does with a page and an item: reading a page, asking the API before
    # the first, the item pipelines.
    ("page", "preflight", "pipelines"),
    # 5. The shared crawl: many workers on one crawl kept in Redis.
    ("shared_crawl",),
    # 6. The spiders, which put the crawl together.
    ("spiders",),
    # 7. The dataset: what a crawl stored, read back as a manifest or WebDataset shards.
    ("dataset",),
    # 8. The scrapy commands of the command line.
    ("commands",),
)

#: The layers of the benchmarks, lowest first, as PACKAGE_LAYERS.
BENCHMARK_LAYERS: tuple[tuple[str, ...], ...] = (
    # 0. The toolkit: running and measuring a crawl (and the server, probe and reference spider
    # it runs), the generated media, the common report.
    ("__init__", "measure", "report", "server", "images", "videos", "probe", "reference_spider")
    + ("gallery_dl_civitai",),
    # 1. The scenarios, each measuring one thing with the toolkit.
    ("disk", "formats", "manifest", "peers", "resize", "scaling", "stores"),
    # 2. The command line, which runs the scenarios.
    ("run",),
)


@dataclass(frozen=True)
class Import:
    """One import of a module of ours by another: ``importer -> imported`` at ``line``."""

    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}"


def module_files(root: Path, tops: tuple[str, ...] = (PACKAGE, BENCHMARKS)) -> dict[str, Path]:
    """Every module of the packages ``tops`` under ``root``, by dotted name."""
    modules = {}
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The dotted names ``module`` imports, relative imports resolved, with their lines."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - (node.level - 1)])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield (submodule if submodule in known else source), node.lineno


def _ours(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours (or of the tests) that ``name`` is, or is in; None for another's."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> list[Import]:
    """Every import of a module of ours (or of the tests) by the package and the benchmarks."""
    known = module_files(root, (PACKAGE, BENCHMARKS, TESTS))
    imports = {}
    for module, path in module_files(root).items():
        for name, line in _imported_names(module, path, known):
            imported = _ours(name, known)
            if imported is not None and imported != module:
                imports.setdefault((module, imported), line)
    return [Import(importer, imported, line) for (importer, imported), line in sorted(imports.items())]


def _layer(module: str, top: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    """The layer of ``module`` of package ``top`` in ``layers``, None when it is in none."""
    name = module.removeprefix(f"{top}.") if module != top else "__init__"
    for number, names in enumerate(layers):
        if any(name == entry or name.startswith(f"{entry}.") for entry in names):
            return number
    return None


def layer_violations(imports: list[Import], top: str, layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """The imports within ``top`` from a lower layer to a higher one."""
    problems = []
    within = [each for each in imports if each.importer.split(".")[0] == each.imported.split(".")[0] == top]
    for each in within:
        low, high = _layer(each.importer, top, layers), _layer(each.imported, top, layers)
        if low is not None and high is not None and low < high:
            problems.append(f"{each} (layer {low} imports layer {high}), line {each.line}")
    return problems


def unplaced(root: Path, top: str, layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """The modules of ``top`` that no layer names."""
    return [
        module
        for module in module_files(root)
        if module.split(".")[0] == top and _layer(module, top, layers) is None
    ]


def cycles(imports: list[Import]) -> list[list[str]]:
    """One circle of imports through each group of modules that import each other (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for each in imports:
        graph.setdefault(each.importer, []).append(each.imported)
        graph.setdefault(each.imported, [])
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            group = {stack.pop()}
            while module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_circle(graph, group) for group in groups]


def _circle(graph: dict[str, list[str]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to it, within the group."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    for module in queue:
        for imported in sorted(graph[module]):
            if imported == start:
                return paths[module] + [start]
            if imported in group and imported not in paths:
                paths[imported] = paths[module] + [imported]
                queue.append(imported)
    raise AssertionError(f"no circle through {sorted(group)}")  # a group of Tarjan's always has one


def test_no_module_imports_in_a_circle() -> None:
    circles = sorted(" -> ".join(circle) for circle in cycles(import_graph(REPOSITORY)))
    assert not circles, "modules that import each other:\n" + "\n".join(circles)


def test_every_module_of_the_package_is_in_a_layer() -> None:
    missing = unplaced(REPOSITORY, PACKAGE, PACKAGE_LAYERS)
    assert not missing, f"add it to a layer of PACKAGE_LAYERS: {missing}"
    named = {name for names in PACKAGE_LAYERS for name in names} - {"__init__"}
    stale = sorted(
        name
        for name in named
        if not (REPOSITORY / PACKAGE / f"{name}.py").is_file() and not (REPOSITORY / PACKAGE / name).is_dir()
    )
    assert not stale, f"PACKAGE_LAYERS names modules that are gone: {stale}"


def test_the_package_imports_downward_only() -> None:
    problems = layer_violations(import_graph(REPOSITORY), PACKAGE, PACKAGE_LAYERS)
    assert not problems, "imports from a lower layer to a higher one:\n" + "\n".join(problems)


def test_every_benchmark_module_is_in_a_layer() -> None:
    missing = unplaced(REPOSITORY, BENCHMARKS, BENCHMARK_LAYERS)
    assert not missing, f"add it to a layer of BENCHMARK_LAYERS: {missing}"
    named = {name for names in BENCHMARK_LAYERS for name in names} - {"__init__"}
    stale = sorted(name for name in named if not (REPOSITORY / BENCHMARKS / f"{name}.py").is_file())
    assert not stale, f"BENCHMARK_LAYERS names modules that are gone: {stale}"


def test_the_benchmarks_import_downward_only() -> None:
    problems = layer_violations(import_graph(REPOSITORY), BENCHMARKS, BENCHMARK_LAYERS)
    assert not problems, "imports from a lower layer to a higher one:\n" + "\n".join(problems)


#: The one module of the tests the benchmarks use: the real Redis and SeaweedFS servers, started
#: on free loopback ports and stopped by pid, which a benchmark measures against as a test does
#: (it needs nothing of pytest).
SHARED_WITH_THE_BENCHMARKS = "tests.support.servers"


def test_the_benchmarks_import_the_package_never_the_reverse_nor_the_tests_but_their_servers() -> None:
    problems = []
    for each in import_graph(REPOSITORY):
        importer, imported = each.importer.split(".")[0], each.imported.split(".")[0]
        if imported == TESTS and not (importer == BENCHMARKS and each.imported == SHARED_WITH_THE_BENCHMARKS):
            problems.append(f"{each} (the {_WHO[importer]} import the tests), line {each.line}")
        elif importer == PACKAGE and imported == BENCHMARKS:
            problems.append(f"{each} (the {_WHO[importer]} import the benchmarks), line {each.line}")
    assert not problems, "imports across the package, the benchmarks and the tests:\n" + "\n".join(problems)
