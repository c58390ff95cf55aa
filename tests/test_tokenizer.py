"""
A BPE learned from the text (prepare.py --tokenizer=bpe): learning from the training split alone, exact round
trips, bits per byte, sampling and exporting with it, and its bad input.
"""

import io
import json
import math
import shutil
from contextlib import redirect_stdout

import numpy as np
import pytest

import prepare
from conftest import TINY, assert_clean_error, inside, needs_gpt2_bpe, prepare_in, run_script, sample_text, user_error
from smallgpt.dataset import open_dataset
from smallgpt.hf_format import check_pretrained_tokenizer, pretrained_tokenizer
from smallgpt.tokenizer import (GPT2_SPEC, SAFE_CUT, bpe_pieces, bpe_safe_cut, bpe_spec, hf_tokenizer, learn_bpe,
                                make_codec, tiktoken_encoding, tokenizer_problem)

WORLD = "Ça va? Naïve café, Øresund — 東京は晴れ、雨のち雪。 🌸👩‍👩‍👧 ROMEO:\n\n\tend <|endoftext|> ok"


def prepare_bpe(cwd, text, *args, vocab_size=300):
    (cwd / "t.txt").write_text(text, encoding="utf-8")
    prepare_in(cwd, "--input=t.txt", "--tokenizer=bpe", f"--vocab_size={vocab_size}", *args)
    return json.loads((cwd / "data" / "t_bpe" / "meta.json").read_text(encoding="utf-8"))


def ids_of(cwd, split):
    return np.fromfile(cwd / "data" / "t_bpe" / f"{split}.bin", dtype=np.uint16).tolist()


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    """A folder with data/t_bpe: a 300-token BPE learned from 40k characters of text."""
    folder = tmp_path_factory.mktemp("bpe")
    prepare_bpe(folder, sample_text())
    return folder


# characters and strings that GPT-2's pre-tokenizer treats in every way it has: letters, digits and others, ASCII
# or not, contractions, whitespace that Python's isspace and the pattern's \s agree or disagree on, combining marks
ADVERSARIAL = [*"ab Z9'.,-_{}\"\n\t\r\x0b\x0c\x1c\x1f\x85\xa0\u3000\u200bé\u0301東٣🙂", "'s", "'ll", "'t", "  ",
               "\n\n", " \n ", "12", " '", "<|endoftext|>"]


@needs_gpt2_bpe
def test_every_safe_cut_keeps_the_tokens_of_gpt2_and_of_a_learned_bpe():
    rng = np.random.default_rng(0)
    # a BPE learned from such text merges across every boundary the pre-tokenizer allows: a cut anywhere else shows
    with redirect_stdout(io.StringIO()):
        learned = learn_bpe(("".join(rng.choice(ADVERSARIAL, size=200)) for _ in range(2000)), 2000, "text")
    for spec in (GPT2_SPEC, learned):
        enc = tiktoken_encoding(spec)
        for trial in range(300):
            text = "".join(rng.choice(ADVERSARIAL, size=rng.integers(1, 120)))
            cuts = [0, *(match.start() for match in SAFE_CUT.finditer(text)), len(text)]
            parts = [text[start:end] for start, end in zip(cuts, cuts[1:])]
            assert [t for part in parts for t in enc.encode_ordinary(part)] == enc.encode_ordinary(text), text


@pytest.mark.parametrize("line", ["a paragraph of web text, one per line\n\n", " an indented line of verse\n",
                                  '{"minified":["json",1,2.5e3,null]},'])
def test_texts_without_a_newline_between_words_are_still_cut_into_small_parts(line):
    """Blank lines between paragraphs, lines that start with a space, no whitespace at all: parts stay small."""
    pieces = [line * 100] * 1000  # 1,000 pieces of about 4 KB
    parts = [text for _, text in prepare.safe_parts(pieces)]
    assert "".join(parts) == line * 100_000
    assert max(len(text) for text in parts) <= len(line) * 100
    assert bpe_safe_cut("x" * 100_000) == 0 and bpe_safe_cut("x" * 100_000 + " y", start=99_000) == 100_000


def test_the_bpe_is_learned_from_the_training_split_alone(tmp_path):
    train_text = sample_text(30_000).replace("z", "s").replace("Z", "S")
    val_text = "zoz zozo! " * 1_000  # 10,000 characters: the last quarter
    meta = prepare_bpe(tmp_path, train_text + val_text, "--val_fraction=0.25")
    merged = bpe_pieces(meta["merges"])[256:]
    assert len(merged) == 300 - 257 and not [piece for piece in merged if b"z" in piece]
    encode, decode = make_codec(meta)
    assert decode(ids_of(tmp_path, "train")) == train_text and decode(ids_of(tmp_path, "val")) == val_text
    assert ids_of(tmp_path, "val") == encode(val_text)


def test_encode_then_decode_gives_back_any_text(bpe_data):
    meta = json.loads((bpe_data / "data" / "t_bpe" / "meta.json").read_text(encoding="utf-8"))
    assert tokenizer_problem(meta) is None
    encode, decode = make_codec(meta)
    assert decode(encode(WORLD)) == WORLD
    assert encode("<|endoftext|>") == [meta["vocab_size"] - 1]  # in a prompt, the end-of-text token
    assert len(encode("ROMEO: the king")) < len("ROMEO: the king")  # merges learned from the text apply


def test_a_text_in_every_script_prepares_and_decodes_exactly(tmp_path):
    text = (WORLD.replace("<|endoftext|>", "") + "\n") * 200
    meta = prepare_bpe(tmp_path, text, vocab_size=320)
    _, decode = make_codec(meta)
    n_train = int(len(text) * 0.9)
    assert decode(ids_of(tmp_path, "train")) == text[:n_train] and decode(ids_of(tmp_path, "val")) == text[n_train:]
    assert meta["splits"]["val"]["bytes"] == len(text[n_train:].encode("utf-8"))


def test_documents_end_with_the_end_of_text_token(tmp_path):
    documents = [f"Document {i}: naïve café ☃ " + "hello world, " * (i % 4) for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in documents), encoding="utf-8")
    prepare_in(tmp_path, "--input=d.jsonl", "--tokenizer=bpe", "--vocab_size=280")
    meta = json.loads((tmp_path / "data" / "d_bpe" / "meta.json").read_text(encoding="utf-8"))
    _, decode = make_codec(meta)
    ids = {split: np.fromfile(tmp_path / "data" / "d_bpe" / f"{split}.bin", dtype=np.uint16).tolist()
           for split in ("train", "val")}
    assert decode(ids["train"] + ids["val"]).count("<|endoftext|>") == len(documents)
    assert ids["train"][-1] == ids["val"][-1] == meta["vocab_size"] - 1
    assert sorted(decode(ids["train"] + ids["val"]).split("<|endoftext|>")[:-1]) == sorted(documents)


def eval_record(cwd):
    records = [json.loads(line) for line in (cwd / "out" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"][-1]


@pytest.mark.slow
def test_bits_per_byte_of_a_char_model_of_ascii_text_is_its_loss_in_bits(tmp_path):
    (tmp_path / "t.txt").write_text(sample_text(20_000), encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt")
    result = run_script("train.py", *TINY, "--dataset=t_char", "--max_iters=10", "--eval_interval=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = eval_record(tmp_path)
    assert record["val_bpb"] == pytest.approx(record["val_loss"] / math.log(2), rel=1e-12)
    assert record["train_bpb"] == pytest.approx(record["train_loss"] / math.log(2), rel=1e-12)
    line = [line for line in result.stdout.splitlines() if line.startswith("step 10:")][0]
    assert line.endswith(f"val loss {record['val_loss']:.4f}, val bpb {record['val_bpb']:.3f}")


@pytest.fixture(scope="module")
def bpe_trained(bpe_data, tmp_path_factory):
    """bpe_data's data/t_bpe, and in out/ a tiny model trained on it for 20 steps."""
    folder = tmp_path_factory.mktemp("bpe-trained")
    shutil.copytree(bpe_data / "data", folder / "data")
    result = run_script("train.py", *TINY, "--dataset=t_bpe", "--max_iters=20", "--eval_interval=20", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.slow
def test_bits_per_byte_of_a_bpe_model_counts_the_bytes_of_its_tokens(bpe_trained):
    tmp_path = bpe_trained
    record = eval_record(tmp_path)
    text = sample_text()
    n_train = int(len(text) * 0.9)
    for split, part in (("train", text[:n_train]), ("val", text[n_train:])):
        tokens_per_byte = len(ids_of(tmp_path, split)) / len(part.encode("utf-8"))
        assert tokens_per_byte < 0.8  # the merges shorten the text
        # the bytes are those of the evaluated tokens, whose bytes per token are about the split's
        assert record[f"{split}_bpb"] == pytest.approx(record[f"{split}_loss"] / math.log(2) * tokens_per_byte,
                                                       rel=0.05)


@pytest.mark.slow
def test_sampling_needs_only_out_dir_and_encodes_any_prompt(bpe_trained, tmp_path):
    shutil.copytree(bpe_trained / "out", tmp_path / "out")  # and no data folder
    prompt = "ROMEO: 東京 🌸 naïve"  # characters the training text never had: byte tokens
    for n in (1, 2):  # one sample streams as it is generated, several are printed whole
        result = run_script("sample.py", f"--start={prompt}", f"--num_samples={n}", "--max_new_tokens=30",
                            cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        samples = result.stdout.split("---------------\n")
        assert len(samples) == n + 1 and all(sample.startswith(prompt) for sample in samples[:n])


@pytest.mark.slow
def test_export_writes_the_tokenizer_that_transformers_loads(bpe_trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tmp_path = tmp_path / "run"
    shutil.copytree(bpe_trained, tmp_path)
    result = run_script("export.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "its BPE of 300 tokens" in result.stdout
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "hf")
    meta = json.loads((tmp_path / "data" / "t_bpe" / "meta.json").read_text(encoding="utf-8"))
    encode, _ = make_codec(meta)
    for text in (WORLD, sample_text()[-3000:]):
        assert hf.encode(text) == encode(text)
        assert hf.decode(encode(text)) == text
    assert hf.eos_token_id == meta["vocab_size"] - 1
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    assert model.config.eos_token_id == meta["vocab_size"] - 1
    # the folder's tokenizer.json is the model's own BPE for sample.py and train.py too
    assert pretrained_tokenizer(str(tmp_path / "out" / "hf")) == {k: v for k, v in meta.items() if k != "splits"}
    result = run_script("sample.py", "--init_from=out/hf", "--start=ROMEO: 東京", "--num_samples=1",
                        "--max_new_tokens=20", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("ROMEO: 東京"), result.stderr
    result = run_script("train.py", *TINY, "--init_from=out/hf", "--dataset=t_bpe", "--max_iters=2",
                        "--out_dir=finetuned", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_tokenizer_json_that_is_not_a_bpe_of_ours_nor_gpt2s_is_refused(tmp_path, bpe_data):
    meta = json.loads((bpe_data / "data" / "t_bpe" / "meta.json").read_text(encoding="utf-8"))
    spec = {key: value for key, value in meta.items() if key != "splits"}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    user_error(lambda: pretrained_tokenizer(str(tmp_path)), "tokenizer.json is neither a byte-level BPE as export.py "
                                                              "writes it nor GPT-2's")
    # GPT-2's own tokenizer.json: 50,257 tokens, <|endoftext|> the last
    vocab = {**{f"t{i}": i for i in range(50256)}, "<|endoftext|>": 50256}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}}))
    assert pretrained_tokenizer(str(tmp_path)) == GPT2_SPEC
    user_error(lambda: check_pretrained_tokenizer(str(tmp_path), spec, "data/t_bpe"),
               "weights need a dataset tokenized with GPT-2's BPE, but data/t_bpe uses the bpe tokenizer")
    hf_tokenizer(spec).save(str(tmp_path / "tokenizer.json"))  # as export.py writes it
    assert pretrained_tokenizer(str(tmp_path)) == spec
    check_pretrained_tokenizer(str(tmp_path), spec, "data/t_bpe")
    user_error(lambda: check_pretrained_tokenizer(str(tmp_path), GPT2_SPEC, "data/t"),
               "need a dataset tokenized with the BPE of its tokenizer.json (300 tokens), but data/t uses another "
               "tokenizer (gpt2, 50257 tokens)")


@pytest.mark.parametrize("args, fragments", [
    (["--vocab_size=256"], ["vocab_size must be at least 257 for --tokenizer=bpe", "got 256"]),
    (["--vocab_size=65537"], ["vocab_size must be in [1, 65536], got 65537"]),
    (["--vocab_size=2000"], ["too short to learn the 1743 merges of a 2000-token BPE", "use --vocab_size="]),
])
def test_bad_vocabularies_are_clean_errors_and_keep_existing_files(tmp_path, args, fragments):
    folder = tmp_path / "data" / "t_bpe"
    folder.mkdir(parents=True)
    old = {name: f"old {name}".encode() for name in ("train.bin", "val.bin", "meta.json")}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    (tmp_path / "t.txt").write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    user_error(lambda: prepare_in(tmp_path, "--input=t.txt", "--tokenizer=bpe", *args), *fragments)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old


def test_the_merges_a_short_text_allows_are_named_and_work(tmp_path):
    (tmp_path / "t.txt").write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    message = user_error(lambda: prepare_in(tmp_path, "--input=t.txt", "--tokenizer=bpe", "--vocab_size=2000"))
    most = int(message.split("use --vocab_size=")[1].split()[0])
    meta = prepare_bpe(tmp_path, "to be or not to be, that is the question\n" * 50, vocab_size=most)
    assert meta["vocab_size"] == most and len(meta["merges"]) == most - 257


@pytest.mark.parametrize("damage, fragments", [
    (lambda meta: meta.pop("merges"), ["meta.json needs \"merges\"", "python prepare.py --input=YOUR_TEXT"]),
    (lambda meta: meta["merges"].__setitem__(5, [9000, 1]), ["meta.json needs \"merges\""]),
    (lambda meta: meta["merges"].append([1, 2]), ["meta.json needs \"merges\""]),
])
def test_a_damaged_bpe_is_a_clean_error(bpe_data, tmp_path, damage, fragments):
    shutil.copytree(bpe_data / "data", tmp_path / "data")
    path = tmp_path / "data" / "t_bpe" / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    damage(meta)
    path.write_text(json.dumps(meta), encoding="utf-8")
    with inside(tmp_path):
        user_error(lambda: open_dataset("t_bpe", block_size=32), *fragments)


@pytest.mark.slow
def test_resuming_on_a_dataset_of_another_tokenizer_is_refused(bpe_data, tmp_path):
    shutil.copytree(bpe_data / "data", tmp_path / "data")
    (tmp_path / "t.txt").write_text(sample_text(), encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt")
    assert run_script("train.py", *TINY, "--dataset=t_char", "--max_iters=2", cwd=tmp_path).returncode == 0
    before = (tmp_path / "out" / "ckpt.pt").read_bytes()
    result = run_script("train.py", *TINY, "--dataset=t_bpe", "--init_from=resume", "--max_iters=4", cwd=tmp_path)
    assert_clean_error(result, "cannot resume", "another tokenizer (char, ", "than data/t_bpe's (bpe, 300 tokens)")
    assert (tmp_path / "out" / "ckpt.pt").read_bytes() == before


@pytest.mark.parametrize("which", ["learned", pytest.param("gpt2", marks=needs_gpt2_bpe)])
def test_a_tiktoken_that_turns_the_text_endoftext_into_the_token_is_refused(bpe_data, monkeypatch, which):
    """What tiktoken before 0.11 did, for GPT-2's BPE and a learned one alike: false document boundaries."""
    import tiktoken
    spec = json.loads((bpe_data / "data" / "t_bpe" / "meta.json").read_text(encoding="utf-8"))
    spec = spec if which == "learned" else GPT2_SPEC
    encode = tiktoken.Encoding.encode_to_numpy
    monkeypatch.setattr(tiktoken.Encoding, "encode_to_numpy",
                        lambda self, text, **kwargs: encode(self, text, allowed_special="all"))
    user_error(lambda: tiktoken_encoding(spec), "encodes the text <|endoftext|> as a special token",
               "pip install 'tiktoken>=0.11'")


@pytest.mark.parametrize("hf_merges", [[["a", "b"], ["a", "b"]],  # one token made twice
                                       [["a", "b"], ["ab", "qq"]],  # a token that was never made
                                       [["a", "b"], ["ab", "c"], ["a", "bc"]]])  # more merges than asked
def test_merges_that_make_no_usable_vocabulary_are_never_written(hf_merges):
    user_error(lambda: bpe_spec(hf_merges, 259, "t.txt"), "the BPE that tokenizers learned from t.txt needs \"merges\"",
               "nothing was written")
    assert bpe_spec([["a", "b"], ["ab", "c"]], 259, "t.txt")["merges"] == [[97, 98], [256, 99]]


@pytest.mark.slow
def test_gpt2s_bpe_files_out_of_reach_are_one_line(tmp_path):
    """No cache and no way to download them (a proxy that refuses, as offline): one line that says what to do."""
    (tmp_path / "text.txt").write_text(sample_text(2_000), encoding="utf-8")
    (tmp_path / "empty_cache").mkdir()
    result = run_script("prepare.py", "--input=text.txt", "--tokenizer=gpt2", cwd=tmp_path, env={
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"), "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""})
    assert_clean_error(result, "GPT-2's BPE files could not be had", "set TIKTOKEN_CACHE_DIR to a folder that holds")
