"""
Chat: conversations rendered by the chat template into ids and a mask of the replies, prepared with each tokenizer,
trained on the replies alone (rows from the starts of conversations), the template through export.py and
transformers' apply_chat_template, chat.py in a pipe, and bad input.
"""

import json

import jinja2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (TINY, assert_clean_error, inside, needs_gpt2_bpe, parse_losses, prepare_in, run_ok,
                      run_script, spelling, user_error, write_chats)
from model import GPT, GPTConfig
from smallgpt.conversations import (MASK_START, MASK_TRAINED, chat_context, chat_template, encode_conversation,
                                    jinja_template, prompt, rendered)
from smallgpt.dataset import chat_rows, open_dataset
from smallgpt.tokenizer import GPT2_SPEC, hf_tokenizer, make_codec, tiktoken_encoding

CONVERSATION = [{"role": "system", "content": " Be brief.\n"}, {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": "hi!"}]


def char_codec(template, text="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .:!?'-\n"):
    chars = sorted(set(text + template["turn_end"]))
    stoi = {c: i for i, c in enumerate(chars)}
    return (lambda s: [stoi[c] for c in s]), (lambda ids: "".join(chars[i] for i in ids)), stoi[template["turn_end"]]


def test_a_conversation_becomes_ids_and_a_mask_of_its_replies():
    template = chat_template("char")
    encode, decode, end = char_codec(template)
    ids, mask = encode_conversation(CONVERSATION, template, encode, end)
    text = decode(ids.tolist())
    assert text == "\x04System: Be brief.\x04User: Say hi.\x04Assistant: hi\x04User: Again?\x04Assistant: hi!\x04"
    trained = "".join(c if m == MASK_TRAINED else "_" for c, m in zip(text, mask))
    assert trained.replace("_", "") == " hi\x04 hi!\x04"  # each reply's space, content and end of turn, and no more
    assert mask[0] == MASK_START and (mask == MASK_START).sum() == 1
    expected = "\x04System: Be brief.\x04User: Say hi.\x04Assistant:"
    assert decode(prompt(CONVERSATION[:2], template, encode, end)) == expected


def test_the_jinja_template_renders_the_text_that_the_pieces_are():
    for tokenizer in ("char", "gpt2"):
        template = chat_template(tokenizer)
        text = "".join(piece for piece, _ in rendered(CONVERSATION, template))
        assert jinja2.Template(jinja_template(template)).render(messages=CONVERSATION) == text
        with_header = jinja2.Template(jinja_template(template)).render(messages=CONVERSATION,
                                                                       add_generation_prompt=True)
        assert with_header == text + "Assistant:"


@pytest.fixture
def chats(tmp_path):
    """tmp_path with chats.jsonl, 40 spelling conversations."""
    write_chats(tmp_path / "chats.jsonl", spelling(40))
    return tmp_path


@pytest.mark.parametrize("tokenizer", ["char", pytest.param("gpt2", marks=needs_gpt2_bpe), "bpe"])
def test_conversations_are_prepared_with_each_tokenizer(chats, tokenizer):
    printed = prepare_in(chats, "--input=chats.jsonl", f"--tokenizer={tokenizer}", "--vocab_size=300", "--dataset=c")
    assert "train has " in printed and "in 36 conversations" in printed and "their masks" in printed
    with_chat = json.loads((chats / "data" / "c" / "meta.json").read_text())
    assert with_chat["chat"]["turn_end"] == ("\x04" if tokenizer == "char" else "<|endoftext|>")
    spec = {key: value for key, value in with_chat.items() if key != "splits"}
    encode, decode = make_codec(spec)
    ids = np.fromfile(chats / "data" / "c" / "train.bin", dtype=np.uint16)
    mask = np.fromfile(chats / "data" / "c" / "train_mask.bin", dtype=np.uint8)
    assert len(mask) == len(ids) == with_chat["splits"]["train"]["tokens"]
    assert (mask == MASK_START).sum() == 36 and (mask == MASK_TRAINED).sum() == with_chat["splits"]["train"]["trained"]
    starts = np.flatnonzero(mask == MASK_START)
    first = decode(ids[starts[0]:starts[1]].tolist())  # the first conversation, as the template renders it
    assert first == "".join(text for text, _ in rendered(spelling(1)[0], spec["chat"]))
    replies = decode(ids[mask == MASK_TRAINED].tolist())
    assert replies.startswith(" k-i-n-g" + spec["chat"]["turn_end"] + " c-r-o-w-n")
    assert with_chat["splits"]["val"]["conversations"] == 4
    with inside(chats):
        assert open_dataset("c", 16)[1] == spec  # train.py reads it, its template with it


def test_rows_start_at_conversations_and_score_the_replies_alone(chats):
    prepare_in(chats, "--input=chats.jsonl", "--dataset=c")
    folder = chats / "data" / "c"
    data = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    mask = np.fromfile(folder / "train_mask.bin", dtype=np.uint8)
    x, y = chat_rows(data, str(folder / "train_mask.bin"), np.random.default_rng(0), 64, 48)
    starts = set(np.flatnonzero(mask == MASK_START).tolist())
    for row_x, row_y in zip(x, y):
        start = next(s for s in starts if np.array_equal(data[s:s + 48][:len(data) - s], row_x[:len(data) - s]))
        for t in range(48):  # the target of position t is the token after it, scored if it is a reply's
            position = start + t + 1
            inside = position < len(data)
            assert row_y[t] == (data[position] if inside and mask[position] == MASK_TRAINED else -1)
    assert (y == -1).any() and (y != -1).any()


def test_the_loss_is_the_mean_over_the_replies_tokens(chats):
    prepare_in(chats, "--input=chats.jsonl", "--dataset=c")
    folder = chats / "data" / "c"
    data = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    x, y = map(torch.from_numpy, chat_rows(data, str(folder / "train_mask.bin"), np.random.default_rng(1), 4, 32))
    torch.manual_seed(0)
    vocab_size = json.loads((folder / "meta.json").read_text())["vocab_size"]
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=vocab_size, bias=False))
    logits, loss = model(x, y)
    log_probs = F.log_softmax(logits, dim=-1)
    by_hand = [-log_probs[b, t, y[b, t]].item() for b in range(4) for t in range(32) if y[b, t] != -1]
    assert loss.item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    assert model(x, y, loss_reduction="sum")[1].item() == pytest.approx(sum(by_hand), rel=1e-5)
    model.chunked_loss = True
    assert model(x, y, loss_reduction="sum")[1].item() == pytest.approx(sum(by_hand), rel=1e-5)


def test_a_long_conversation_keeps_its_system_prompt_and_its_last_messages():
    template = chat_template("char")
    encode, decode, end = char_codec(template)
    talk = [CONVERSATION[0]] + [{"role": role, "content": f"message {i}"} for i in range(8)
                                for role in ("user", "assistant")][:-1]
    whole = prompt(talk, template, encode, end)
    assert chat_context(talk, template, encode, end, len(whole)) == whole
    kept = decode(chat_context(talk, template, encode, end, 100))
    assert kept.startswith("\x04System: Be brief.\x04User: message") and kept.endswith("message 7\x04Assistant:")
    assert len(kept) <= 100 and "message 0" not in kept
    cut = decode(chat_context(talk[:1] + [{"role": "user", "content": "x" * 200}], template, encode, end, 50))
    assert len(cut) == 50 and cut.endswith("x\x04Assistant:")  # one message too long for the context: its end


@pytest.mark.parametrize("record, fragments", [
    ('not json', ["line 2 is not a JSON object"]),
    ('{"messages": []}', ['line 2 has no "messages" list']),
    ('{"messages": [{"role": "bot", "content": "x"}]}', ['line 2 has a message whose "role" is \'bot\'']),
    ('{"messages": [{"role": "user", "content": ["x"]}]}', ['line 2 has a user message whose "content" is list']),
    ('{"messages": [{"role": "user", "content": "x"}]}', ["line 2 has no assistant message", "nothing to train on"]),
    ('{"messages": [{"role": "user", "content": "a\\u0004"}, {"role": "assistant", "content": "b"}]}',
     ["line 2 has a user message holding '\\x04'", "would end the turn there"]),
    ('{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "b"}]}',
     ["line 2 has a lone surrogate"]),
])
def test_bad_conversations_are_one_line_naming_the_line_and_keep_the_folder(chats, record, fragments):
    lines = (chats / "chats.jsonl").read_text().splitlines()
    (chats / "chats.jsonl").write_text("\n".join([lines[0], record, *lines[1:]]) + "\n")
    (chats / "data" / "c").mkdir(parents=True)
    (chats / "data" / "c" / "meta.json").write_text("old")
    user_error(lambda: prepare_in(chats, "--input=chats.jsonl", "--dataset=c"), "chats.jsonl", *fragments)
    assert [p.name for p in (chats / "data" / "c").iterdir()] == ["meta.json"]
    assert (chats / "data" / "c" / "meta.json").read_text() == "old"


def same_files(folder, other):
    return all((folder / name).read_bytes() == (other / name).read_bytes()
               for name in ("train.bin", "val.bin", "train_mask.bin", "val_mask.bin", "meta.json"))


def test_conversations_from_parquet_are_those_of_jsonl(chats):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.table({"id": range(40), "messages": spelling(40)}), chats / "chats.parquet")
    prepare_in(chats, "--input=chats.parquet", "--dataset=parquet")
    prepare_in(chats, "--input=chats.jsonl", "--dataset=jsonl")
    assert same_files(chats / "data" / "parquet", chats / "data" / "jsonl")


@pytest.mark.slow
def test_conversations_of_a_hugging_face_dataset_are_those_of_jsonl(chats):
    pytest.importorskip("datasets")
    (chats / "hub_chats").mkdir()  # a folder of data files is a dataset to the datasets package
    write_chats(chats / "hub_chats" / "part-0.jsonl", spelling(40))
    result = run_script("prepare.py", "--input=hf:hub_chats", "--dataset=hub", cwd=chats,
                        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(chats / "hf")})
    assert result.returncode == 0, result.stderr
    prepare_in(chats, "--input=chats.jsonl", "--dataset=jsonl")
    assert same_files(chats / "data" / "hub", chats / "data" / "jsonl")


def test_a_char_model_reads_conversations_in_its_own_characters(chats, tmp_path):
    """tokenizer_from: the base's alphabet, and a character of it that no conversation uses to end turns."""
    contents = " ".join(message["content"] for messages in spelling(40) for message in messages)
    (tmp_path / "text.txt").write_text(("System: User: Assistant; " + contents + "\n") * 20)
    prepare_in(tmp_path, "--input=text.txt", "--dataset=base")
    prepare_in(tmp_path, "--input=chats.jsonl", "--tokenizer_from=data/base", "--dataset=c")
    base, meta = (json.loads((tmp_path / "data" / name / "meta.json").read_text()) for name in ("base", "c"))
    assert meta["chars"] == base["chars"] and meta["chat"]["turn_end"] == ";"  # the first free one of MARKERS
    write_chats(tmp_path / "odd.jsonl", [[{"role": "user", "content": "Spell 東京."},
                                          {"role": "assistant", "content": "king"}]] * 10)
    user_error(lambda: prepare_in(tmp_path, "--input=odd.jsonl", "--tokenizer_from=data/base", "--dataset=odd"),
               "odd.jsonl has characters that the tokenizer has no token for: '京東'")
    user_error(lambda: prepare_in(tmp_path, "--input=odd.jsonl", "--tokenizer_from=data/nothing"),
               "tokenizer_from 'data/nothing' not found")


@needs_gpt2_bpe
def test_gpt2s_bpe_for_transformers_encodes_as_tiktoken():
    text = "To be, or not to be: that is the question.\n\n  Héllo 東京 🙂 x  <|endoftext|>12345 don't"
    assert hf_tokenizer(GPT2_SPEC).encode(text).ids == tiktoken_encoding(GPT2_SPEC).encode(text, allowed_special="all")


# -----------------------------------------------------------------------------
# train.py, chat.py and export.py as a user runs them

@pytest.mark.slow
def test_a_model_trained_on_conversations_answers_in_turns(spelled):
    folder, stdout = spelled
    _, val = parse_losses(stdout)
    assert val[300] < 0.3 * val[0]  # the replies, and only they, are what the loss counts
    assert run_ok("chat.py", "--start=Spell crown.", "--top_k=1", "--device=cpu", cwd=folder) == "c-r-o-w-n\n"
    # in a pipe: two turns, each reply ended at its turn's end; a message the model cannot read is said and skipped
    result = run_script("chat.py", "--top_k=1", "--device=cpu", "--system=Spell it.", cwd=folder,
                        input="Spell king.\nSpell 東京.\n\nSpell night.\n")
    assert result.returncode == 0 and result.stdout == "k-i-n-g\nn-i-g-h-t\n", result.stdout
    assert result.stderr.strip() == ("error: the model cannot read the message: "
                                     "characters not in the vocabulary: '京東'")


@pytest.mark.slow
def test_chat_py_refuses_a_model_without_a_template(finished_run):
    assert_clean_error(run_script("chat.py", "--device=cpu", cwd=finished_run[0]),
                       "out/ckpt.pt has no chat template: it was trained on text, which sample.py continues")


@pytest.mark.slow
@needs_gpt2_bpe
def test_gpt2_finetuned_on_conversations_exports_its_template_for_transformers(tmp_path):
    """LoRA on a GPT-2-format model (its embeddings frozen: the template's tokens are GPT-2's): the replies' loss
    falls below the base's, and the exported folder's apply_chat_template gives prepare.py's ids."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
                                 ).save_pretrained(base)
    write_chats(tmp_path / "chats.jsonl", [*spelling(60), CONVERSATION])
    prepare_in(tmp_path, "--input=chats.jsonl", "--tokenizer=gpt2", "--dataset=chats")
    stdout = run_ok("train.py", "--dataset=chats", f"--init_from={base}", "--lora_rank=4", "--max_iters=30",
                    "--learning_rate=3e-2", "--eval_interval=30", "--eval_iters=2", "--batch_size=4", "--block_size=32",
                    "--device=cpu", cwd=tmp_path)
    _, val = parse_losses(stdout)
    assert val[30] < val[0] - 0.2  # the replies, from ln(50257): LoRA on random frozen embeddings learns slowly
    run_ok("export.py", cwd=tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "hf")
    enc = tiktoken_encoding(GPT2_SPEC)
    template = chat_template("gpt2")
    for messages in [*spelling(3), CONVERSATION]:
        ids, _ = encode_conversation(messages, template, enc.encode_ordinary, enc.eot_token)
        theirs = tokenizer.apply_chat_template(messages, tokenize=True)
        assert list(getattr(theirs, "input_ids", theirs)) == ids.tolist()
    reply = run_ok("chat.py", "--init_from=out/hf", "--start=Spell king.", "--max_new_tokens=5", "--device=cpu",
                   cwd=tmp_path)
    assert reply.endswith("\n") and len(reply) < 80  # the exported folder has its template: chat.py reads it


@pytest.mark.slow
def test_a_chat_run_resumes_exactly_stops_early_keeps_its_time_and_tune_py_searches_on_it(spelled):
    folder, _ = spelled
    args = [*TINY, "--dataset=chats", "--n_embd=64", "--block_size=128", "--eval_interval=4", "--log_interval=1",
            "--max_iters=8", "--lr_decay_iters=8"]
    straight = parse_losses(run_ok("train.py", *args, "--out_dir=straight", cwd=folder))
    run_ok("train.py", *args, "--out_dir=halves", "--max_iters=4", cwd=folder)
    resumed = parse_losses(run_ok("train.py", *args, "--out_dir=halves", "--init_from=resume", cwd=folder))
    assert all(resumed[0][i] == straight[0][i] for i in range(4, 8)) and resumed[1][8] == straight[1][8]
    stopped = run_ok("train.py", *args, "--out_dir=patient", "--patience=1", "--learning_rate=0", "--decay_lr=False",
                     cwd=folder)
    assert "early stop at iter 4" in stopped
    timed = run_ok("train.py", *args, "--out_dir=timed", "--max_seconds=1", "--max_iters=100000", cwd=folder)
    assert "max_seconds=1: " in timed and "done: best val loss" in timed
    (folder / "search.py").write_text('search = {"learning_rate": (1e-3, 1e-2, "log")}\n')
    result = run_script("tune.py", "search.py", "--trials=1", *args, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "trial 0 complete" in result.stdout
