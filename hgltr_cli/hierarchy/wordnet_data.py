"""WordNet 3.0 for nltk without `nltk.download` (offline machines).

Debian's `wordnet-base` + `wordnet-sense-index` install WordNet 3.0 under /usr/share/wordnet.
nltk's reader needs those files copied (not linked: nltk's path sandbox refuses links that
leave its data roots) into <nltk_data>/corpora/wordnet, plus a `lexnames` file Debian does
not ship: its 45 lines are fixed by WordNet 3.0's lexnames(5) manual page, written below.
WordNet 3.0 synset offsets are ImageNet's wnids ('n02123045' = noun offset 2123045).

    python -m hgltr_cli.hierarchy.wordnet_data          # prepare once, print the folder
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from hgltr_cli.errors import HgltrError

SYSTEM_WORDNET = Path("/usr/share/wordnet")
FILES = ("cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
         "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
# lexnames(5WN), WordNet 3.0: file number, lexicographer file, syntactic category (1 n, 2 v, 3 a, 4 r)
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body
noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive
noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation
noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication
verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception
verb.possession verb.social verb.stative verb.weather adj.ppl""".split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

INSTALL_HINT = ("Install WordNet 3.0 once: `sudo apt-get install -y wordnet-base wordnet-sense-index` "
                "(Debian/Ubuntu), or `python -m nltk.downloader wordnet` where the internet is reachable.")


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def default_cache_dir() -> Path:
    """$HGLTR_CACHE or ~/.cache/hgltr (XDG_CACHE_HOME respected)."""
    if os.environ.get("HGLTR_CACHE"):
        return Path(os.environ["HGLTR_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hgltr"


def prepare_wordnet(cache_dir: str | Path | None = None, source: str | Path = SYSTEM_WORDNET) -> Path:
    """Copy the system WordNet into <cache>/nltk_data/corpora/wordnet (once); returns nltk_data.

    Idempotent: a complete folder is reused. Files are copied to a temp folder and renamed,
    so an interrupted run never leaves a half-prepared corpus behind.
    """
    src = Path(source)
    nltk_data = Path(cache_dir or default_cache_dir()) / "nltk_data"
    target = nltk_data / "corpora" / "wordnet"
    if all((target / f).is_file() for f in (*FILES, "lexnames")):
        return nltk_data
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise HgltrError(f"WordNet 3.0 is not installed: {src} lacks {', '.join(missing[:4])}"
                         + (" ..." if len(missing) > 4 else "") + ".", INSTALL_HINT)
    tmp = target.with_name(f"wordnet.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(src / f, tmp / f)
    (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return nltk_data


def _nltk_has_wordnet() -> bool:
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            continue
    return False


def wordnet_available(source: str | Path = SYSTEM_WORDNET) -> bool:
    """True when WordNet can be loaded (nltk_data has it, or the system files exist)."""
    return all((Path(source) / f).is_file() for f in FILES) or _nltk_has_wordnet()


_READERS: dict[str, object] = {}


def get_wordnet(cache_dir: str | Path | None = None, source: str | Path = SYSTEM_WORDNET):
    """nltk's WordNet reader: the system WordNet 3.0 (prepared in the cache), else nltk_data's."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if all((Path(source) / f).is_file() for f in FILES):
        root = prepare_wordnet(cache_dir, source)
        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))
        location = root / "corpora" / "wordnet"
    elif _nltk_has_wordnet():
        location = None
    else:
        raise HgltrError(f"WordNet is not available: neither {source} nor nltk_data holds it.", INSTALL_HINT)
    key = str(location)
    if key not in _READERS:
        with warnings.catch_warnings():  # "multilingual functions are not available": not needed
            warnings.simplefilter("ignore")
            if location is None:
                from nltk.corpus import wordnet as wn

                wn.ensure_loaded()
                _READERS[key] = wn
            else:
                _READERS[key] = WordNetCorpusReader(str(location), None)
    return _READERS[key]


if __name__ == "__main__":  # pragma: no cover - a set-up convenience
    try:
        print(prepare_wordnet(sys.argv[1] if len(sys.argv) > 1 else None))
    except HgltrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
