"""`hgltr build-hierarchy`: a hierarchy source + the dataset's class list -> a hierarchy file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional

import typer

from hgltr_cli.commands.common import ConfigOpt, PrintConfigOpt, SetOpt, print_config_and_exit, resolve_config
from hgltr_cli.console import user_errors


@dataclass
class SourceSection:
    """The hierarchy source plugin; its own options are keys of this section too."""

    COMPONENT_KIND: ClassVar[str] = "hierarchies"
    name: str = "wordnet"


@dataclass
class BuildSection:
    classes: Optional[str] = None  # class list, one per line in label order (`CLASS` or `CLASS<TAB>name`)
    output: Optional[str] = None  # hierarchy file to write (.json or .yaml)
    plot: Optional[str] = None  # PNG heatmap of H in tree order
    distance: Literal["pair-depth", "lca-height"] = "pair-depth"  # for the summary and the plot
    preview_depth: int = 3  # levels shown in the tree preview
    preview_children: int = 6  # children shown per node in the preview


@dataclass
class BuildHierarchyConfig:
    source: SourceSection = field(default_factory=SourceSection)
    build: BuildSection = field(default_factory=BuildSection)


SHORTHANDS = {"source": "source.name", "classes": "build.classes", "output": "build.output", "plot": "build.plot",
              "distance": "build.distance", "taxonomy": "source.taxonomy", "categories": "source.categories",
              "mapping": "source.mapping", "dag_rule": "source.dag_rule"}


def tree_preview(hier, depth: int = 3, children: int = 6):
    """A rich Tree of the primary paths: `depth` levels, `children` per node, counts of classes."""
    from rich.tree import Tree

    kids: dict[str, list[str]] = {}
    below: dict[str, int] = {}
    for e in hier.entries:
        for a, b in zip(e.path, e.path[1:]):
            if b not in kids.setdefault(a, []):
                kids[a].append(b)
        for n in e.path:
            below[n] = below.get(n, 0) + 1
    class_ids = set(hier.classes)

    def label(n: str) -> str:
        name = hier.node_name(n)
        return f"[bold]{name}[/]" if n in class_ids else f"{name} [dim]({below[n]})[/]"

    tree = Tree(f"[bold]{hier.root}[/] [dim]({len(hier)} classes)[/]")

    def add(node: str, branch, level: int) -> None:
        ch = kids.get(node, [])
        for c in ch[:children]:
            sub = branch.add(label(c))
            if level + 1 < depth:
                add(c, sub, level + 1)
            elif kids.get(c):
                sub.add(f"[dim]... {len(kids[c])} below[/]")
        if len(ch) > children:
            branch.add(f"[dim]... {len(ch) - children} more[/]")

    add(hier.root, tree, 0)
    return tree


def print_summary(hier, stats: dict, output: str | None, plot: str | None) -> None:
    from rich.table import Table

    from hgltr_cli.console import out

    t = Table(title=f"hierarchy from {hier.source} ({hier.source_version})", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("classes", str(stats["classes"]))
    t.add_row("depth min / median / max", f"{stats['depth_min']} / {stats['depth_median']:g} / {stats['depth_max']}")
    t.add_row("nodes per level", " ".join(str(n) for n in stats["nodes_per_level"]))
    t.add_row("internal nodes", str(stats["internal_nodes"]))
    t.add_row("classes with several paths", str(stats["multi_path_classes"]))
    t.add_row("+inf pairs (root LCA)", f"{100 * stats['inf_pair_share']:.1f}%")
    t.add_row(f"max finite H ({stats['distance']})", f"{stats['max_finite_distance']:g}")
    t.add_row("rules", ", ".join(f"{k}={v}" for k, v in hier.rules.items()))
    t.add_row("content hash", hier.content_hash)
    if output:
        t.add_row("written", output)
    if plot:
        t.add_row("heatmap", plot)
    out.print(t)


def register(app: typer.Typer) -> None:
    @app.command("build-hierarchy")
    @user_errors
    def build_hierarchy_cmd(
        source: Annotated[Optional[str], typer.Option(help="Hierarchy source (`hgltr list hierarchies`): wordnet, file, inat, cifar100.")] = None,
        classes: Annotated[Optional[str], typer.Option(help="Class list in label order: one class per line (`CLASS` or `CLASS<TAB>display name`).")] = None,
        output: Annotated[Optional[str], typer.Option("--output", "-o", help="Hierarchy file to write (.json or .yaml).")] = None,
        plot: Annotated[Optional[str], typer.Option(help="Also write the LCA-distance heatmap (PNG), classes in tree order.")] = None,
        taxonomy: Annotated[Optional[str], typer.Option(help="file source: YAML/JSON tree, CSV/TSV level table, path list or Places365 table.", rich_help_panel="Source options")] = None,
        categories: Annotated[Optional[str], typer.Option(help="inat source: the dataset's categories.json.", rich_help_panel="Source options")] = None,
        mapping: Annotated[Optional[str], typer.Option(help="wordnet source: `CLASS<TAB>SYNSET` file pinning plain or ambiguous names.", rich_help_panel="Source options")] = None,
        dag_rule: Annotated[Optional[str], typer.Option(help="wordnet/file: longest-path, shortest-path or all-paths.", rich_help_panel="Source options")] = None,
        distance: Annotated[Optional[str], typer.Option(help="H for the summary and plot: pair-depth or lca-height.")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        print_config: PrintConfigOpt = False,
    ):
        """Build a class-hierarchy file (paths in label order, LCA distances) from a taxonomy source.

        The class order always follows your class list (the dataset's label order).

        Examples:

          hgltr build-hierarchy --source cifar100 --output cifar100.json

          hgltr build-hierarchy --source wordnet --classes imagenet_synsets.txt --output in1k.json --plot in1k.png

          hgltr build-hierarchy --source wordnet --classes names.txt --mapping synsets.tsv -o hier.json

          hgltr build-hierarchy --source file --taxonomy tree.yaml --classes classes.txt -o hier.json

          hgltr build-hierarchy --source file --taxonomy scene_hierarchy_places365.csv --classes places.txt -o places.json

          hgltr build-hierarchy --source inat --categories categories.json -o inat2018.json

        Source options are also config keys: --set source.dag_rule=all-paths, --set source.cut='[]'
        (WordNet rooted at entity); `hgltr list hierarchies` shows every source's options.
        """
        from hgltr_cli.errors import HgltrError
        from hgltr_cli.hierarchy import read_class_list
        from hgltr_cli.plugins import get_plugins

        values = dict(source=source, classes=classes, output=output, plot=plot, taxonomy=taxonomy,
                      categories=categories, mapping=mapping, dag_rule=dag_rule, distance=distance)
        plugins = get_plugins()
        resolved = resolve_config(BuildHierarchyConfig, config=config, sets=set_, plugins=plugins,
                                  shorthands={SHORTHANDS[k]: v for k, v in values.items()})
        if print_config:
            print_config_and_exit(resolved)
        b = resolved.build
        if not b.output:
            raise HgltrError("no output file given.", "Pass --output FILE.json (or set build.output).")
        for flag, target, example in (("--output", b.output, "hierarchy.json"), ("--plot", b.plot, "hierarchy.png")):
            if target and Path(target).is_dir():
                raise HgltrError(f"{flag} {target!r} is a directory.",
                                 f"Give a file name, e.g. {flag} {Path(target) / example}.")
        comp = plugins.get("hierarchies", resolved.source.name)
        keys, names = read_class_list(b.classes) if b.classes else (None, None)
        hier = comp.factory(resolved.options.get("source"), keys)
        if names and any(names):
            hier = hier.with_names(names)
        stats = hier.summary(b.distance)  # computes H: a broken hierarchy fails before anything is written
        written = str(hier.save(b.output))  # a failed write is an HgltrError naming the file
        plotted = None
        if b.plot:
            from hgltr_cli.hierarchy.plot import plot_heatmap

            try:
                plotted = str(plot_heatmap(hier, b.plot, kind=b.distance))
            except OSError as exc:
                raise HgltrError(f"could not write the heatmap to {b.plot!r}: {exc.strerror or exc}. "
                                 f"The hierarchy itself was written to {written}.",
                                 "Give another --plot path, or drop --plot.") from None
        from hgltr_cli.console import out

        out.print(tree_preview(hier, b.preview_depth, b.preview_children))
        print_summary(hier, stats, written, plotted)
