"""The corpus reader refuses malformed parallel data with a message naming the file and line."""

from __future__ import annotations

import gzip
import unicodedata

import pytest

# The corpus reader needs `datasets`; a GPU image may lack it: skip, do not fail collection.
datasets = pytest.importorskip("datasets")

from transformer.translation.batching import batch_indices, shard  # noqa: E402
from transformer.translation.data import (  # noqa: E402
    DEFAULT_DATA_DIR,
    CorpusError,
    encode_split,
    load_split,
    read_lines,
    read_parallel,
)
from transformer.translation.evaluation import bleu_tokenizer, translation_scores  # noqa: E402
from transformer.translation.tokenizer import decode, train_tokenizer  # noqa: E402


def write(path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def test_reads_plain_and_gzip_files_alike(tmp_path):
    for name in ("a.de", "a.de.gz"):
        write(tmp_path / name, "Ein Hund.\r\nZwei Katzen.\n")
        assert read_lines(tmp_path / name) == ["Ein Hund.", "Zwei Katzen."]


def test_a_byte_order_mark_at_the_start_is_not_part_of_the_first_sentence(tmp_path):
    for name in ("b.de", "b.de.gz"):
        write(tmp_path / name, "\ufeffEin Hund.\n\ufeffZwei Katzen.\n")  # only the first is a BOM
        assert read_lines(tmp_path / name) == ["Ein Hund.", "\ufeffZwei Katzen."]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"nothere\.de: no such file"):
        read_lines(tmp_path / "nothere.de")


def test_undecodable_bytes_name_file_and_line(tmp_path):
    write(tmp_path / "bad.de.gz", b"gut\nauch gut\nkaputt \xff\xfe\n")
    with pytest.raises(CorpusError, match=r"bad\.de\.gz:3: not valid UTF-8"):
        read_lines(tmp_path / "bad.de.gz")


def test_undecodable_bytes_are_shown_at_their_1_based_position_with_what_to_do(tmp_path):
    write(tmp_path / "l1.fr", "Le café.\n".encode("latin-1"))
    with pytest.raises(
        CorpusError, match=r"l1\.fr:1: not valid UTF-8 \(bytes e9 at byte 7\); convert .* iconv"
    ):
        read_lines(tmp_path / "l1.fr")


@pytest.mark.parametrize("name", ["u.fr", "u.fr.gz"])
def test_a_utf16_file_is_named_as_utf16_with_the_conversion_to_run(tmp_path, name):
    write(tmp_path / name, "Le chien.\nLe chat.\n".encode("utf-16"))
    with pytest.raises(CorpusError, match=r"u\.fr(\.gz)? is UTF-16 .*iconv -f utf-16 -t utf-8"):
        read_lines(tmp_path / name)


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_empty_line_names_file_and_line(tmp_path, blank):
    write(tmp_path / "x.en", f"one\ntwo\n{blank}\nfour\n")
    with pytest.raises(CorpusError, match=r"x\.en:3: empty line"):
        read_lines(tmp_path / "x.en")


def test_line_count_mismatch_is_refused_not_truncated(tmp_path):
    write(tmp_path / "t.de", "a\nb\nc\n")
    write(tmp_path / "t.en", "a\nb\n")
    with pytest.raises(
        CorpusError, match=r"line-count mismatch: .*t\.de has 3 lines, .*t\.en has 2"
    ):
        read_parallel(tmp_path / "t.de", tmp_path / "t.en")


def test_corrupt_gzip_is_refused(tmp_path):
    text = "".join(f"Satz {i} mit etwas Inhalt.\n" for i in range(2000)).encode()
    packed = gzip.compress(text)
    (tmp_path / "c.de.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(CorpusError, match=r"c\.de\.gz: cannot read"):
        read_lines(tmp_path / "c.de.gz")


def test_a_gzip_file_with_damaged_compressed_data_is_one_corpus_error_naming_it(tmp_path):
    """A flipped byte inside the deflate stream raised zlib.error, not an OSError: a traceback."""
    text = "".join(f"Satz {i} mit etwas Inhalt.\n" for i in range(2000)).encode()
    packed = bytearray(gzip.compress(text, mtime=0))
    packed[20] ^= 0x5A  # the first bytes of the deflate stream, after the 10-byte header
    (tmp_path / "d.de.gz").write_bytes(bytes(packed))
    with pytest.raises(CorpusError, match=r"d\.de\.gz: cannot read"):
        read_lines(tmp_path / "d.de.gz")


def test_directory_split_missing_file(tmp_path):
    write(tmp_path / "train.de", "a\n")
    with pytest.raises(CorpusError, match=r"no file for split 'train', language 'en'"):
        load_split(tmp_path, "train")


def test_a_missing_split_names_the_names_tried_and_the_files_there_are(tmp_path):
    """It said only 'expected val.fr or val.fr.gz', though validation, valid and dev are read
    too, and not what the directory holds (a test split, or other languages)."""
    for name in ("train.fr", "train.en", "test.fr", "test.en.gz"):
        write(tmp_path / name, "Un chien.\n")
    with pytest.raises(CorpusError) as err:
        load_split(tmp_path, "val", "fr", "en")
    message = str(err.value)
    assert "expected val.fr[.gz], validation.fr[.gz], valid.fr[.gz] or dev.fr[.gz]" in message
    assert message.endswith("; files here: test.en.gz, test.fr, train.en, train.fr")
    with pytest.raises(CorpusError, match=r"expected train\.de\[\.gz\]; files here: test"):
        load_split(tmp_path, "train", "de", "en")


def test_the_two_sides_of_a_split_are_never_read_from_two_differently_named_files(tmp_path):
    """val.en and dev.fr were paired as the val split (each language took the first name found)."""
    write(tmp_path / "dev.fr", "Un chien.\n")
    write(tmp_path / "dev.en", "A dog.\n")
    write(tmp_path / "val.en", "An old cat.\n")
    with pytest.raises(CorpusError, match=r"dev\.fr and val\.en, files of different names"):
        load_split(tmp_path, "val", "fr", "en")


def test_a_split_in_both_plain_and_gzip_form_is_refused_as_ambiguous(tmp_path):
    write(tmp_path / "train.de", "Ein Hund.\n")
    write(tmp_path / "train.de.gz", "Eine Katze.\n")
    write(tmp_path / "train.en", "A dog.\n")
    with pytest.raises(CorpusError, match=r"both train\.de and train\.de\.gz exist"):
        load_split(tmp_path, "train")


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "dataset_dict.json").write_text("{bad"),
        lambda d: (d / "dataset_dict.json").write_text('{"splits": ["train", "gone"]}'),
        lambda d: [p.write_bytes(p.read_bytes()[:40]) for p in d.glob("*/*.arrow")],
    ],
    ids=["corrupt-json", "missing-split-directory", "truncated-arrow"],
)
def test_an_unreadable_saved_dataset_is_one_corpus_error_naming_the_directory(tmp_path, damage):
    """load_from_disk's JSONDecodeError, FileNotFoundError and ArrowInvalid were tracebacks."""
    good = datasets.Dataset.from_dict({"de": ["Hallo Welt."] * 50, "en": ["Hello world."] * 50})
    datasets.DatasetDict({"train": good}).save_to_disk(str(tmp_path / "saved"))
    damage(tmp_path / "saved")
    with pytest.raises(CorpusError, match=r"saved: not a readable datasets save_to_disk directory"):
        load_split(tmp_path / "saved", "train")


def test_saved_datasets_directory(tmp_path):
    good = datasets.Dataset.from_dict(
        {"de": ["Hallo Welt.", "Ja."], "en": ["Hello world.", "Yes."]}
    )
    datasets.DatasetDict({"train": good, "validation": good}).save_to_disk(str(tmp_path / "ok"))
    val = load_split(tmp_path / "ok", "val")
    assert val["en"][:] == ["Hello world.", "Yes."]
    bad = datasets.Dataset.from_dict({"de": ["Hallo", ""], "en": ["Hello", "x"]})
    datasets.DatasetDict({"train": bad}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(CorpusError, match=r"row 1 of column 'de' is empty"):
        load_split(tmp_path / "bad", "train")


def test_saved_sentences_are_stripped_as_lines_of_text_files_are(tmp_path):
    """They came through as written: a "\\r\\n" kept at the end of a target was learnt and
    translated into output that broke lines in = lines out."""
    saved = datasets.Dataset.from_dict(
        {"fr": ["  Le chien. ", "Le chat\n"], "en": ["The dog.\r\n", "\tThe cat"]}
    )
    datasets.DatasetDict({"train": saved}).save_to_disk(str(tmp_path / "ws"))
    ds = load_split(tmp_path / "ws", "train", "fr", "en")
    assert ds[:] == {"fr": ["Le chien.", "Le chat"], "en": ["The dog.", "The cat"]}


def test_a_saved_sentence_with_a_line_break_inside_is_refused_naming_its_row(tmp_path):
    saved = datasets.Dataset.from_dict({"fr": ["Un.", "Le chien.\nLe chat."], "en": ["A.", "B."]})
    datasets.DatasetDict({"train": saved}).save_to_disk(str(tmp_path / "nl"))
    with pytest.raises(CorpusError, match=r"nl\[train\]: row 1 of column 'fr' has a line break"):
        load_split(tmp_path / "nl", "train", "fr", "en")


def test_a_saved_translation_column_of_language_dicts_is_read_as_two_columns(tmp_path):
    """The layout of the hub's translation datasets (wmt14, opus_books, ...): one column
    ``translation`` of {lang: sentence}. It was refused: no column 'fr'."""
    rows = [{"fr": "Le chien.", "en": "The dog."}, {"fr": "Le chat.", "en": "The cat."}]
    features = datasets.Features({"translation": datasets.Translation(languages=["en", "fr"])})
    saved = datasets.Dataset.from_dict({"translation": rows}, features=features)
    datasets.DatasetDict({"train": saved, "validation": saved}).save_to_disk(str(tmp_path / "t"))
    ds = load_split(tmp_path / "t", "val", "fr", "en")
    assert ds.column_names == ["fr", "en"]
    assert ds[:] == {"fr": ["Le chien.", "Le chat."], "en": ["The dog.", "The cat."]}
    with pytest.raises(CorpusError, match=r"no 'de' in column 'translation' \(languages: en, fr\)"):
        load_split(tmp_path / "t", "train", "de", "en")


def test_references_are_in_the_tokenizers_normalization_so_a_perfect_decode_equals_them():
    """A corpus in NFD (accents as combining marks, as macOS writes) gave references in NFD and
    decodes in NFKC: a model that reproduced every target exactly scored about 5 BLEU."""
    fr = ["Le café est près de l'école.", "Un élève à côté du théâtre."]
    en = ["Le café était très agréable.", "Ça a coûté 12\u00a0€."]
    nfd = [unicodedata.normalize("NFD", t) for t in en]
    ds = datasets.Dataset.from_dict({"fr": fr * 3, "en": nfd * 3})
    tokenizer = train_tokenizer(fr * 3 + nfd * 3, vocab_size=200, min_frequency=1)
    corpus = encode_split(tokenizer, ds, "fr", "en")
    assert decode(tokenizer, [ids[1:-1] for ids in corpus.tgt]) == corpus.tgt_text
    assert corpus.tgt_text[:2] == ["Le café était très agréable.", "Ça a coûté 12 €."]


def test_chinese_references_are_scored_by_characters_not_as_one_word_a_sentence():
    """sacreBLEU's default splitting (13a) takes a Chinese sentence, written without spaces,
    for one word: a translation one character off scored 0 BLEU. The corpus knows its target
    language and the scores split Chinese by characters (sacreBLEU's zh)."""
    zh = ["我喜欢吃苹果和香蕉。", "他们在公园里踢足球。"]
    en = ["I like to eat apples and bananas.", "They play football in the park."]
    ds = datasets.Dataset.from_dict({"en": en * 3, "zh": zh * 3})
    tokenizer = train_tokenizer(en * 3 + zh * 3, vocab_size=200, min_frequency=1)
    corpus = encode_split(tokenizer, ds, "en", "zh")
    assert corpus.tgt_lang == "zh"
    one_off = ["我喜欢吃苹果和橘子。", "他们在公园里踢足球。"]  # one sentence one word off
    scores = translation_scores(one_off, corpus.tgt_text[:2], corpus.tgt_lang)
    assert 60 < scores["bleu"] < 100, scores
    assert bleu_tokenizer("zh-TW") == bleu_tokenizer("zh_Hans") == "zh"
    assert bleu_tokenizer("en") == bleu_tokenizer("de") == "13a"
    english = translation_scores(["They play in the park ."], ["They play in the park."], "en")
    assert english["bleu"] == pytest.approx(100.0)  # 13a splits the full stop off either way


def test_shipped_multi30k_is_complete():
    sizes = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
    for split, size in sizes.items():
        ds = load_split(DEFAULT_DATA_DIR, split)
        assert len(ds) == size and ds.column_names == ["de", "en"]


def test_batches_fit_budget_cover_everything_and_depend_only_on_seed_and_epoch():
    lengths = [(i * 7) % 23 + 1 for i in range(500)]
    batches = batch_indices(lengths, 64, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 64 for b in batches)
    assert batches == batch_indices(lengths, 64, seed=3, epoch=1)
    assert batches != batch_indices(lengths, 64, seed=3, epoch=2)
    shards = [shard(batches, r, 3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))
