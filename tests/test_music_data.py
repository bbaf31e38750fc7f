"""Music data: ABC cleaning, vocabulary, the three sources, splits, cached window batches."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from framework.errors import UserError
from plugins.music_lstm.abc import SkipTune, clean_tune, decode_bytes, split_tunes
from plugins.music_lstm.data import MusicDataModule, read_corpus, split_by_tune
from plugins.music_lstm.vocab import Vocabulary

TRICKY_FILE = """\
% a file header comment, before any tune
A collection of tunes, free text.

X:1
T:First Tune
C:Trad.
M:6/8
L:1/8
R:jig
N:a note
K:G
%%MIDI program 1
|:GAB cBA|"Am"d2e "^slowly"fed|  G3   G3:| % end comment
w: la la la
W: more words

X: 2
T:Second, no key
M:4/4
L:1/8
abcd efga|

X:3
T:Empty body
M:3/4
K:D
% nothing but comments
"^text only"

X:4
T:Caf\u00e9 tune with accents
M:3/4
L:1/4
Q:1/4=90
K:Em
"_d\u00e9cresc."E F G|A B c|d3|]

X:5
T:Bad characters
M:2/4
K:C
CDEF \u00a7 GABc|

X:6
T:Voices
M:4/4
K:C
V:1
CDEF|
V:2
EFGA|

X:7
M:2/4
K:Dm
A:| d2 d2 | A4 :|

this blank-line-separated text after tune 7 is not part of it
"""


def clean_all(text, **kw):
    kept, skipped = [], {}
    for raw in split_tunes(text):
        try:
            kept.append(clean_tune(raw, **kw))
        except SkipTune as err:
            skipped[raw.split("\n")[0]] = err.reason
    return kept, skipped


def test_split_tunes_at_x_lines():
    raws = split_tunes(TRICKY_FILE)
    assert len(raws) == 7
    assert all(r.startswith("X:") for r in raws)
    assert "free text" not in "".join(raws)


def test_cleaning_tricky_abc():
    kept, skipped = clean_all(TRICKY_FILE, min_notes=1)
    assert skipped == {"X: 2": "missing K:", "X:3": "empty body", "X:5": "non-ASCII", "X:6": "multi-voice"}
    first, accents, repeat = kept
    # header: only M, L, Q, K (K last); no X:, T:, C:, R:, N:; comments, directives and lyrics gone;
    # annotations dropped, chord symbols kept; runs of spaces collapsed.
    assert first == 'M:6/8\nL:1/8\nK:G\n|:GAB cBA|"Am"d2e fed| G3 G3:|'
    assert accents == "M:3/4\nL:1/4\nQ:1/4=90\nK:Em\nE F G|A B c|d3|]"
    # "A:|" is a note and a repeat sign, not a field; the text after the blank line is not the tune
    assert repeat == "M:2/4\nK:Dm\nA:| d2 d2 | A4 :|"


def test_cleaning_options():
    raw = split_tunes(TRICKY_FILE)[0]
    with_lyrics = clean_tune(raw, keep_lyrics=True, keep_fields=["T", "M", "L", "R", "K"])
    assert with_lyrics.startswith("T:First Tune\nM:6/8\nL:1/8\nR:jig\nK:G\n")
    assert "w:la la la" in with_lyrics
    assert '"Am"' not in clean_tune(raw, strip_chord_symbols=True)
    assert '"^slowly"' in clean_tune(raw, strip_annotations=False)
    with pytest.raises(SkipTune, match="too long"):
        clean_tune(raw, max_chars=20)
    with pytest.raises(SkipTune, match="too few notes"):
        clean_tune(raw, min_notes=100)
    # non-ASCII kept when asked
    bad = split_tunes(TRICKY_FILE)[4]
    assert "\u00a7" in clean_tune(bad, ascii_only=False)


def test_field_lines_are_read_one_way_for_cleaning_and_checking():
    from plugins.music_lstm import abc_check
    from plugins.music_lstm.abc import field_line

    assert field_line("K:G").groups() == ("K", "G") and field_line("+:Allegro").groups() == ("+", "Allegro")
    for music in ("A:|", "B::", "|:GAB", "ab:c"):  # a note before a repeat sign, a barline, text
        assert field_line(music) is None, music
    # the header check reads "+:" (a continued field) as the cleaner does: part of the header, not music
    header, body = abc_check.split_header("M:6/8\nQ:1/4=120\n+:Allegro\nK:G\n|:GAB cBA:|\nA:|B")
    assert header == [("M", "6/8"), ("Q", "1/4=120"), ("+", "Allegro"), ("K", "G")] and body == "|:GAB cBA:|\nA:|B"
    assert clean_tune("X:1\nM:6/8\n+:Allegro\nK:G\n|:GAB cBA|GAB cBA:|\n") == "M:6/8\nK:G\n|:GAB cBA|GAB cBA:|"


def test_latin1_files_decode():
    assert decode_bytes("K:G\nBl\u00fcmelein".encode("latin-1")).endswith("Bl\u00fcmelein")
    assert decode_bytes("caf\u00e9".encode("utf-8")) == "caf\u00e9"


def test_vocabulary_framing_and_round_trip():
    vocab = Vocabulary.build(["M:2/4\nK:G\nabc|", "xyz"], ["irish", "german"])
    assert vocab.tokens[:3] == ["<pad>", "<s>", "</s>"]
    assert vocab.labels == ["irish", "german"]
    ids = vocab.encode_tune("abc|", "german")
    assert ids[0] == vocab.label_token("german") and ids[1] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert ids[:2] == vocab.prefix("german")
    assert vocab.decode(ids) == "abc|"
    assert vocab.decode(ids, specials=True) == "<label:german><s>abc|</s>"
    assert vocab.label_index("german") == 1
    with pytest.raises(KeyError, match="labels: irish, german"):
        vocab.label_token("scottish")
    with pytest.raises(KeyError, match="'Q'"):
        vocab.encode("Q")
    # extending keeps every old id
    bigger, new_labels, new_chars = vocab.extended(["abcQ~"], ["german", "chinese"])
    assert bigger.tokens[: len(vocab)] == vocab.tokens
    assert new_labels == ["chinese"] and new_chars == ["Q", "~"]
    assert Vocabulary(bigger.tokens) == bigger


@pytest.fixture(scope="module")
def music21_corpus():
    from omegaconf import OmegaConf

    from plugins.music_lstm import data as data_module

    conf = data_module.__file__.replace("data.py", "conf/data/music21.yaml")
    cfg = OmegaConf.to_container(OmegaConf.load(conf))
    return read_corpus(cfg | {"source": "music21"})  # the source its _target_ (Music21Data) reads


def test_music21_corpus_labels_and_round_trip(music21_corpus):
    tunes, summary = music21_corpus
    assert summary["files"] > 1000 and summary["tunes_kept"] > 12000
    assert set(summary["tunes_per_label"]) == {"american", "chinese", "english", "german", "irish", "scottish"}
    assert summary["tunes_skipped"]["no label for file"] > 0  # josquin and the Essen test files
    assert sum(summary["tunes_skipped"].values()) + summary["tunes_kept"] == summary["tunes_read"]
    by_source = {t.source.split("/")[0]: t.label for t in tunes}
    assert by_source["oneills1850"] == "irish" and by_source["ryansMammoth"] == "american"
    assert {t.label for t in tunes if t.source.startswith("essenFolksong/han")} == {"chinese"}
    vocab = Vocabulary.build((t.text for t in tunes), sorted(summary["tunes_per_label"]))
    for tune in tunes:  # every character of the corpus survives the round trip
        assert vocab.decode(vocab.encode_tune(tune.text, tune.label)) == tune.text
    assert all(t.text.isascii() and "\nK:" in "\n" + t.text for t in tunes)


def test_split_by_tune_is_fixed_and_disjoint(music21_corpus):
    tunes = music21_corpus[0][:500]
    a = split_by_tune(tunes, 7, 0.1, 0.1)
    b = split_by_tune(tunes, 7, 0.1, 0.1)
    assert [t.source for t in a["test"]] == [t.source for t in b["test"]]
    assert len(a["val"]) == len(a["test"]) == 50 and len(a["train"]) == 400
    sources = [t.source for split in a.values() for t in split]
    assert len(set(sources)) == 500
    c = split_by_tune(tunes, 8, 0.1, 0.1)
    assert [t.source for t in a["test"]] != [t.source for t in c["test"]]


def make_abc_dir(root):
    (root / "reels").mkdir(parents=True)
    (root / "airs" / "deep").mkdir(parents=True)
    tune = "X:{n}\nT:t{n}\nM:4/4\nL:1/8\nK:{key}\n|:{body}:|\n\n"
    (root / "reels" / "a.abc").write_text("".join(tune.format(n=n, key="D", body="ABcd efge") for n in range(1, 7)))
    (root / "airs" / "deep" / "b.abc").write_text("".join(tune.format(n=n, key="G", body="GABc dedB") for n in range(1, 5)))
    (root / "loose.abc").write_text(tune.format(n=1, key="C", body="CDEF GABc") + "X:2\nT:no key\nCDEF|\n")
    (root / "notes.txt").write_text("not abc")


def dm(tmp_path, **kw) -> MusicDataModule:
    base = dict(val_fraction=0.2, test_fraction=0.2, seq_len=16, eval_seq_len=24, batch_size=4, batches_per_epoch=3,
                cache_dir=str(tmp_path / "cache"))
    return MusicDataModule(**(base | kw))


def test_abc_dir_loader_labels_from_folders(tmp_path):
    make_abc_dir(tmp_path / "abc")
    tunes, summary = read_corpus({"source": "abc_dir", "path": str(tmp_path / "abc")})
    assert summary["files"] == 3 and summary["tunes_read"] == 12 and summary["tunes_kept"] == 11
    assert summary["tunes_skipped"] == {"missing K:": 1}
    assert summary["tunes_per_label"] == {"airs": 4, "reels": 6, "unlabelled": 1}
    assert tunes[0].text.startswith("M:4/4\nL:1/8\nK:")


def test_each_source_is_its_own_class_and_keeps_the_cache(tmp_path):
    from hydra.utils import instantiate

    from framework.config import compose
    from plugins.music_lstm.data import AbcDirData, HoyoMusicData, Music21Data

    make_abc_dir(tmp_path / "abc")
    chosen = {"music21": Music21Data, "hoyomusic": HoyoMusicData, "abc_dir": AbcDirData}
    for name, cls in chosen.items():
        cfg = compose(["task=music", f"data={name}", f"data.path={tmp_path / 'abc'}", f"paths.cache={tmp_path / 'cache'}"])
        module = instantiate(cfg.data, _convert_="all")
        assert type(module) is cls and module.cfg["source"] == name
    # a train run saved before these classes (MusicDataModule with source:) reads the same tunes from
    # the same cache
    new = AbcDirData(path=str(tmp_path / "abc"), cache_dir=str(tmp_path / "cache"))
    old = MusicDataModule(source="abc_dir", path=str(tmp_path / "abc"), cache_dir=str(tmp_path / "cache"))
    assert new.cache_key() == old.cache_key()


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data path does not exist: .*nowhere"):
        read_corpus({"source": "abc_dir", "path": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="data path does not exist"):
        read_corpus({"source": "hoyomusic", "path": str(tmp_path / "nowhere.jsonl")})


HOYO_ABC = "X:1\nT:{t}\nM:4/4\nL:1/8\nQ:1/4=100\nK:{k}\n\"^intro\" {body} |]\n"


def hoyomusic_rows():
    return [
        {"prompt": "Mondstadt style", "data": HOYO_ABC.format(t="a", k="F", body="FGAB cdef | g2f2 e2d2"), "label": "Mondstadt"},
        {"prompt": "Liyue style", "data": HOYO_ABC.format(t="b", k="D", body="DEFA B2A2 | d2B2 A4"), "label": "Liyue"},
        {"prompt": "", "data": HOYO_ABC.format(t="c", k="C", body="C2E2 G2c2 | B2G2 E2D2"), "label": 3},
        {"prompt": "", "data": "X:9\nT:broken\nM:4/4\nabc|\n", "label": "Liyue"},
    ] + [
        {"prompt": "", "data": HOYO_ABC.format(t=f"n{i}", k="G", body="GABc d2B2 | c2A2 G4"), "label": "Snezhnaya"}
        for i in range(6)
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hoyomusic_offline_fixture(tmp_path, fmt):
    rows = hoyomusic_rows()
    path = tmp_path / f"hoyo.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # parquet columns have one type: integer labels as their class names' indices
        names = ["Teyvat", "Mondstadt", "Liyue", "Inazuma", "Sumeru", "Fontaine", "Natlan", "Snezhnaya"]
        table = [r | {"label": r["label"] if isinstance(r["label"], int) else names.index(r["label"])} for r in rows]
        pq.write_table(pa.Table.from_pylist(table), path)
    tunes, summary = read_corpus({"source": "hoyomusic", "path": str(path)})
    assert summary["tunes_read"] == 10 and summary["tunes_kept"] == 9
    assert summary["tunes_skipped"] == {"missing K:": 1}
    assert summary["tunes_per_label"] == {"inazuma": 1, "liyue": 1, "mondstadt": 1, "snezhnaya": 6}
    assert all("intro" not in t.text and "T:" not in t.text for t in tunes)

    module = dm(tmp_path, source="hoyomusic", path=str(path))
    module.prepare_data()
    module.setup("fit")
    assert module.model_kwargs()["labels"] == ["inazuma", "liyue", "mondstadt", "snezhnaya"]
    assert sum(len(v) for v in module.tunes.values()) == 9


def test_datamodule_batches_and_cache(tmp_path, caplog):
    make_abc_dir(tmp_path / "abc")
    module = dm(tmp_path, source="abc_dir", path=str(tmp_path / "abc"))
    module.prepare_data()
    module.setup("fit")
    vocab = module.vocab
    assert module.model_kwargs() == {"vocab": vocab.tokens, "labels": ["airs", "reels", "unlabelled"]}
    assert {k: len(v) for k, v in module.tunes.items()} == {"train": 7, "val": 2, "test": 2}
    batches = list(module.train_dataloader())
    assert len(batches) == 3
    x, y, lab = batches[0]
    assert x.shape == y.shape == lab.shape == (4, 16)
    assert x.dtype == y.dtype == lab.dtype == torch.int64
    # y is x shifted by one, except where the next token is a label token (ignored as <pad>)
    label_ids = torch.tensor(vocab.label_ids)
    shifted = (y[:, :-1] == x[:, 1:]) | ((y[:, :-1] == vocab.pad_id) & torch.isin(x[:, 1:], label_ids))
    assert shifted.all()
    assert not torch.isin(y, label_ids).any()
    # the label index of every position is that of the tune it belongs to
    tokens, _, labels = module.arrays["train"]
    starts = torch.isin(tokens, label_ids).nonzero().flatten()
    for s in starts.tolist():
        assert vocab.labels[labels[s]] == vocab.tokens[tokens[s]][len("<label:"):-1]
    val = list(module.val_dataloader())
    assert sum(len(b[0]) for b in val) == len(module.arrays["val"][0]) // 24 and val[0][0].shape[1] == 24

    # a second module with the same settings loads the cached arrays; other settings, other key
    again = dm(tmp_path, source="abc_dir", path=str(tmp_path / "abc"))
    with caplog.at_level(logging.INFO, logger="plugins.music_lstm.data"):
        again.prepare_data()
        again.setup("fit")
    assert "from cache" in caplog.text
    assert again.vocab == vocab and torch.equal(again.arrays["train"][0], module.arrays["train"][0])
    assert again.tunes["test"] == module.tunes["test"]
    other = dm(tmp_path, source="abc_dir", path=str(tmp_path / "abc"), val_fraction=0.3)
    assert other.cache_key() != module.cache_key()
    assert len(list((tmp_path / "cache" / "music").glob("*.npz"))) == 1


def test_adopt_checkpoint_adds_or_skips_new_characters(tmp_path):
    make_abc_dir(tmp_path / "abc")
    old = Vocabulary.build(["M:4/4\nL:1/8\nK:D\n|:ABcd efge:|"], ["reels"])
    ckpt = {"hyper_parameters": {"vocab": old.tokens, "labels": old.labels}}

    grown = dm(tmp_path, source="abc_dir", path=str(tmp_path / "abc"), cache_dir=None)
    grown.adopt_checkpoint(ckpt)
    grown.setup("fit")
    assert grown.vocab.tokens[: len(old)] == old.tokens
    assert grown.summary["added_labels"] == ["airs", "unlabelled"]
    assert set(grown.summary["added_characters"]) == {"C", "E", "F", "G"}

    strict = dm(tmp_path, source="abc_dir", path=str(tmp_path / "abc"), cache_dir=None)
    strict.adopt_checkpoint(ckpt, new_chars="skip")
    strict.setup("fit")
    assert strict.vocab == old
    assert strict.summary["tunes_skipped"]["label not in the model"] == 5
    assert strict.summary["tunes_kept"] == 6

    with pytest.raises(UserError, match="no vocabulary"):
        grown.adopt_checkpoint({"hyper_parameters": {}})


def test_hoyomusic_hub_code_path(monkeypatch):
    """Without data.path the loader calls datasets.load_dataset on the hub; here it returns the fixture
    (as a DatasetDict with an integer ClassLabel, the hub's schema) since this machine has no network."""
    datasets = pytest.importorskip("datasets")
    names = ["Teyvat", "Mondstadt", "Liyue", "Inazuma", "Sumeru", "Fontaine", "Natlan", "Snezhnaya"]
    rows = [r | {"label": r["label"] if isinstance(r["label"], int) else names.index(r["label"])} for r in hoyomusic_rows()]
    features = datasets.Features({"prompt": datasets.Value("string"), "data": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:7], features=features),
                                 "test": datasets.Dataset.from_list(rows[7:], features=features)})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: calls.append(name) or fake)
    tunes, summary = read_corpus({"source": "hoyomusic", "path": None})
    assert calls == ["Genius-Society/hoyoMusic"]
    assert summary["tunes_kept"] == 9
    assert summary["tunes_per_label"] == {"inazuma": 1, "liyue": 1, "mondstadt": 1, "snezhnaya": 6}
