"""
GPT-2's weights: loading Hugging Face's files and saving them (checked against transformers' own GPT-2),
finetuning, resuming, exporting and evaluating through the scripts, and downloading and sampling from a
local stand-in for the Hugging Face Hub. The models are tiny and random, made with transformers; nothing
leaves 127.0.0.1.
"""

import hashlib
import http.server
import json
import sys
import threading

import pytest
import torch

import prepare
from conftest import ROOT, TINY, RunsCode, assert_clean_error, needs_gpt2_bpe, parse_losses, run_script, sample_text
from model import GPT, GPTConfig
from smallgpt import tokenizer
from smallgpt.checkpoint import load_checkpoint
from smallgpt.errors import UserError
from smallgpt.hf_format import save_pretrained

transformers = pytest.importorskip("transformers")
GPT2Config, GPT2LMHeadModel, GPT2Model = transformers.GPT2Config, transformers.GPT2LMHeadModel, transformers.GPT2Model


def hf_gpt2(vocab_size=50257, n_positions=64, cls=GPT2LMHeadModel, **config):
    """A tiny transformers GPT-2 with every weight random, biases and LayerNorms included."""
    torch.manual_seed(0)
    model = cls(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=n_positions, **config))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def hf_logits(model, idx):
    if isinstance(model, GPT2Model):  # no head of its own: it is the token embedding
        return model(idx).last_hidden_state @ model.wte.weight.t()
    return model(idx).logits


def our_logits(model, idx):
    model.eval()
    return model(idx, idx)[0]  # with targets: logits for every position


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A tiny GPT-2 with GPT-2's vocabulary, saved by transformers: config.json and model.safetensors."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf_gpt2().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    """A folder with data/shakespeare: 20k characters of text in GPT-2 tokens."""
    folder = tmp_path_factory.mktemp("gpt2-data")
    (folder / "text.txt").write_text(sample_text(20_000), encoding="utf-8")
    prepare.prepare(str(folder / "text.txt"), str(folder / "data" / "shakespeare"), "gpt2", 0.1)
    return folder


# -----------------------------------------------------------------------------
# hf_format.py: GPT.from_pretrained and save_pretrained

@pytest.mark.parametrize("weights, cls", [("model.safetensors", GPT2LMHeadModel),
                                          ("pytorch_model.bin", GPT2LMHeadModel), ("model.safetensors", GPT2Model)])
def test_loads_transformers_gpt2_with_the_same_outputs(tmp_path, weights, cls):
    hf = hf_gpt2(vocab_size=67, n_positions=24, cls=cls)  # GPT2Model saves its weights without 'transformer.'
    hf.config.save_pretrained(tmp_path)
    if weights == "model.safetensors":
        hf.save_pretrained(tmp_path)
    else:  # what transformers 4 wrote with safe_serialization=False
        torch.save(hf.state_dict(), tmp_path / weights)
    model = GPT.from_pretrained(str(tmp_path))
    assert model.config.bias and (model.config.block_size, model.config.vocab_size) == (24, 67)
    idx = torch.randint(67, (2, 24))
    with torch.no_grad():
        assert torch.allclose(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5)


def test_old_gpt2_files_with_mask_buffers_and_a_head_load(tmp_path):
    """Like OpenAI's pytorch_model.bin: no 'transformer.' prefix, and the causal mask in attn.bias, attn.masked_bias."""
    hf = hf_gpt2(vocab_size=50, n_positions=16)
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    idx = torch.randint(50, (1, 16))
    with torch.no_grad():
        assert torch.allclose(our_logits(GPT.from_pretrained(str(tmp_path)), idx), hf(idx).logits, atol=1e-5)


@pytest.mark.parametrize("bias, activation, hf_activation", [(True, "gelu_tanh", "gelu_new"), (False, "gelu", "gelu")])
def test_save_pretrained_is_read_by_transformers_and_back(tmp_path, bias, activation, hf_activation):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=71, bias=bias,
                          activation=activation))
    save_pretrained(model, str(tmp_path / "hf"))
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "generation_config.json",
                                                                  "model.safetensors"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 24 and config["vocab_size"] == 71
    assert config["activation_function"] == hf_activation
    idx = torch.randint(71, (2, 24))
    with torch.no_grad():
        expected = our_logits(model, idx)
        assert torch.allclose(GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()(idx).logits, expected, atol=1e-5)
        assert torch.equal(our_logits(GPT.from_pretrained(str(tmp_path / "hf")), idx), expected)


def test_transformers_never_generates_the_ids_that_pad_an_exported_vocabulary(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=320, bias=True))
    with torch.no_grad():  # every position ends as all ones, which the padding ids 300-319 match best
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[300:] = 10.0
    save_pretrained(model, str(tmp_path), tokenizer_vocab_size=300)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    prompt = torch.tensor([[1, 2]])
    assert hf(prompt).logits[0, -1].argmax() >= 300  # left to the logits, the padding would be drawn
    for sampling in (dict(do_sample=False), dict(do_sample=True, top_k=0)):
        generated = hf.generate(prompt, max_new_tokens=8, attention_mask=torch.ones_like(prompt), **sampling)
        assert generated[0, 2:].max() < 300 and hf.generation_config.eos_token_id == 299


def test_a_gpt2_with_the_exact_gelu_loads_with_it(tmp_path):
    hf = hf_gpt2(vocab_size=67, n_positions=24, activation_function="gelu")
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path))
    assert model.config.activation == "gelu"
    idx = torch.randint(67, (2, 24))
    with torch.no_grad():
        assert torch.allclose(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5)


@pytest.mark.parametrize("option", [dict(rotary=True), dict(qk_norm=True), dict(attn_scale=1.5)])
def test_options_beyond_gpt2_cannot_be_saved_in_its_format(tmp_path, option):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50, **option))
    with pytest.raises(UserError, match="GPT-2's format cannot hold this model: it uses"):
        save_pretrained(model, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_dropout_is_the_one_setting_to_override(gpt2_folder):
    assert GPT.from_pretrained(str(gpt2_folder), dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(AssertionError):
        GPT.from_pretrained(str(gpt2_folder), dict(n_layer=3))


@pytest.mark.parametrize("config, fragments", [
    (dict(activation_function="relu"), ["activation_function='relu' (GPT-2: 'gelu_new')"]),
    (dict(scale_attn_by_inverse_layer_idx=True), ["scale_attn_by_inverse_layer_idx=True"]),
    (dict(layer_norm_epsilon=1e-6), ["layer_norm_epsilon=1e-06"]),
    (dict(n_inner=100), ["n_inner=100"]),
    (dict(tie_word_embeddings=False), ["tie_word_embeddings=False"]),
    (dict(model_type="gpt_neo"), ["describes a gpt_neo model, not GPT-2"]),
    (dict(n_head=3), ["n_embd (32) is not divisible by n_head (3)"]),
])
def test_models_unlike_gpt2_are_refused(tmp_path, gpt2_folder, config, fragments):
    (tmp_path / "model.safetensors").write_bytes((gpt2_folder / "model.safetensors").read_bytes())
    original = json.loads((gpt2_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**original, **config}))
    with pytest.raises(UserError) as error:
        GPT.from_pretrained(str(tmp_path))
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("files, fragments", [
    ({}, ["has no config.json"]),
    ({"ckpt.pt": b""}, ["has no config.json", "python export.py --out_dir="]),
    ({"config.json": b"{}"}, ["no weights: neither model.safetensors nor pytorch_model.bin"]),
    ({"config.json": b"{not json", "model.safetensors": b""}, ["is not valid JSON"]),
    ({"config.json": b"[1, 2]", "model.safetensors": b""}, ["is not a model configuration"]),
    ({"config.json": b"{}", "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\""},
     ["not a readable weights file"]),
    ({"config.json": b"{}", "pytorch_model.bin": b"PK\x03\x04 truncated"}, ["not a readable weights file"]),
])
def test_folders_that_are_not_gpt2_models_are_refused(tmp_path, files, fragments):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as error:
        GPT.from_pretrained(str(tmp_path))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_weights_that_config_json_does_not_describe_are_refused(tmp_path, gpt2_folder):
    (tmp_path / "model.safetensors").write_bytes((gpt2_folder / "model.safetensors").read_bytes())
    original = json.loads((gpt2_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**original, "n_embd": 64}))
    with pytest.raises(UserError, match=r"transformer.wte.weight is \(50257, 32\), not \(50257, 64\)"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**original, "n_layer": 3}))
    with pytest.raises(UserError, match=r"missing \['transformer.h.2.attn.c_attn.bias'"):
        GPT.from_pretrained(str(tmp_path))


def test_a_pytorch_model_bin_that_runs_code_is_never_unpickled(tmp_path, monkeypatch, gpt2_folder):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_bytes((gpt2_folder / "config.json").read_bytes())
    torch.save({"transformer.wte.weight": RunsCode()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="not a readable weights file"):
        GPT.from_pretrained(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_missing_packages_say_how_to_install_them(monkeypatch, gpt2_folder, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(UserError, match="needs huggingface_hub: pip install huggingface_hub safetensors"):
        GPT.from_pretrained("gpt2")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(UserError, match="needs safetensors: pip install safetensors"):
        GPT.from_pretrained(str(gpt2_folder))
    with pytest.raises(UserError, match="needs safetensors: pip install safetensors"):
        save_pretrained(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10)), str(tmp_path))


# -----------------------------------------------------------------------------
# the scripts: finetuning, resuming, exporting and evaluating

@pytest.mark.slow
@needs_gpt2_bpe
def test_finetune_config_on_a_folder_then_resume_export_and_evaluate(gpt2_data, gpt2_folder):
    # GPT-2's vocabulary makes even this tiny model slow to train: few and short sequences, and a high learning rate
    # in float16 with the gradient scaler, as on an older GPU: exported, the weights evaluate as they did
    args = [ROOT / "config" / "finetune_shakespeare.py", f"--init_from={gpt2_folder}", "--device=cpu", "--batch_size=4",
            "--block_size=16", "--gradient_accumulation_steps=1", "--eval_iters=2", "--eval_interval=3",
            "--learning_rate=1e-2", "--dropout=0.1", "--always_save_checkpoint=True", "--dtype=float16"]
    result = run_script("train.py", *args, "--max_iters=6", cwd=gpt2_data)
    assert result.returncode == 0, result.stderr
    assert (f"initializing from {gpt2_folder}: n_layer=2, n_head=2, n_embd=32, vocab_size=50257, "
            f"block_size 64 -> 16") in result.stdout
    _, val = parse_losses(result.stdout)
    assert val[6] < val[0] - 0.2
    ckpt_path = gpt2_data / "out" / "ckpt.pt"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    assert checkpoint["model_args"] == dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True,
                                            vocab_size=50257, dropout=0.1, activation="gelu_tanh", rotary=False,
                                            qk_norm=False, attn_scale=1.0)
    assert checkpoint["tokenizer"] == {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}
    assert checkpoint["pretrained"] == str(gpt2_folder)

    # the same settings resume it: the model's shape comes from the checkpoint, not from the config's defaults
    result = run_script("train.py", *args, "--max_iters=7", "--init_from=resume", cwd=gpt2_data)
    assert result.returncode == 0, result.stderr
    assert "resuming from out/ckpt.pt at iter 6; changed: max_iters 6 -> 7" in result.stdout
    last_eval = [line for line in result.stdout.splitlines() if line.startswith("step 7:")][0]

    result = run_script("export.py", cwd=gpt2_data)
    assert result.returncode == 0, result.stderr
    assert "wrote out/hf/config.json, generation_config.json and model.safetensors" in result.stdout
    model, _ = load_checkpoint(str(ckpt_path))
    exported = GPT2LMHeadModel.from_pretrained(gpt2_data / "out" / "hf").eval()
    idx = torch.randint(50257, (2, 16))
    with torch.no_grad():
        assert torch.allclose(exported(idx).logits, our_logits(model, idx), atol=1e-5)

    # the eval config on the exported folder: the same batches, so the same losses as the checkpoint's last eval
    result = run_script("train.py", ROOT / "config" / "eval_gpt2.py", "--init_from=out/hf", "--device=cpu",
                        "--dataset=shakespeare", "--block_size=16", "--batch_size=4", "--eval_iters=2",
                        "--out_dir=eval", "--dtype=float16", cwd=gpt2_data)
    assert result.returncode == 0, result.stderr
    assert last_eval.replace("step 7:", "step 0:") in result.stdout.splitlines()
    assert not (gpt2_data / "eval" / "ckpt.pt").exists()


@pytest.fixture(scope="module")
def small_vocab_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small-vocab")
    hf_gpt2(vocab_size=67).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def char_checkpoint(gpt2_data):
    """gpt2_data with a char-level dataset in data/chars, a char model in chars-out/, a rotary one in rotary-out/."""
    meta = {"tokenizer": "char", "vocab_size": 65, "chars": "".join(map(chr, range(32, 97)))}
    model_args = dict(n_layer=1, n_head=1, n_embd=8, block_size=8, bias=False, vocab_size=65, dropout=0.0)
    (gpt2_data / "chars-out").mkdir()
    torch.save({"model": GPT(GPTConfig(**model_args)).state_dict(), "model_args": model_args, "tokenizer": meta},
               gpt2_data / "chars-out" / "ckpt.pt")
    # and one with GPT-2's tokenizer but rotary embeddings, which GPT-2's format has no place for
    rotary_args = dict(model_args, vocab_size=50304, rotary=True)
    (gpt2_data / "rotary-out").mkdir()
    torch.save({"model": GPT(GPTConfig(**rotary_args)).state_dict(), "model_args": rotary_args,
                "tokenizer": tokenizer.GPT2_SPEC}, gpt2_data / "rotary-out" / "ckpt.pt")
    prepare.prepare(str(gpt2_data / "text.txt"), str(gpt2_data / "data" / "chars"), "char", 0.1)
    return gpt2_data


@pytest.mark.slow
@needs_gpt2_bpe
@pytest.mark.parametrize("script, args, fragments", [
    ("train.py", ["--block_size=65"], ["block_size=65 is longer than the 64 positions of", "use --block_size=64"]),
    ("train.py", ["--init_from=gpt2-large"], ["cannot download openai-community/gpt2-large/config.json",
                                              "out of reach (or HF_HUB_OFFLINE=1)"]),
    ("train.py", ["--dataset=chars"], ["weights need a dataset tokenized with GPT-2's BPE",
                                       "data/chars uses the char tokenizer", "--tokenizer=gpt2"]),
    ("sample.py", ["--init_from=SMALL"], ["has 67 tokens, fewer than GPT-2's 50257"]),
    ("export.py", ["--out_dir=chars-out"], ["is a char-level model: only BPE models"]),
    ("export.py", ["--out_dir=rotary-out"], ["cannot export to rotary-out/hf: GPT-2's format cannot hold this model: "
                                             "it uses rotary"]),
])
def test_bad_pretrained_settings_are_clean_errors(char_checkpoint, gpt2_folder, small_vocab_folder, script, args,
                                                  fragments):
    args = [arg.replace("SMALL", str(small_vocab_folder)) for arg in args]
    if script == "train.py":
        args = [*TINY, "--dataset=shakespeare", f"--init_from={gpt2_folder}", *args]
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(char_checkpoint / "hf")}  # nothing may be downloaded here
    assert_clean_error(run_script(script, *args, cwd=char_checkpoint, env=offline), *fragments)


# -----------------------------------------------------------------------------
# downloads, from a local server that answers as the Hugging Face Hub does

class HubHandler(http.server.BaseHTTPRequestHandler):
    """
    GET and HEAD of /{repo_id}/resolve/{revision}/{filename}, with the headers that huggingface_hub needs: the
    commit (X-Repo-Commit) and an ETag; a missing repository or file gets the Hub's X-Error-Code.
    """
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def do_HEAD(self):
        self.answer(with_body=False)

    def do_GET(self):
        self.server.gets.append(self.path)
        self.answer(with_body=True)

    def answer(self, with_body):
        repo_id, _, rest = self.path.lstrip("/").partition("/resolve/")
        folder = self.server.repos.get(repo_id)
        path = folder / rest.partition("/")[2] if folder else None
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if folder else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path):
    """A local Hub on 127.0.0.1: serve folders by adding them to hub.repos; hub.gets lists the files fetched."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.repos, server.gets = {}, []
    server.env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path / "hf")}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


def greedy_text(hf, prompt, max_new_tokens):
    """Greedy decoding with transformers' model and tiktoken's GPT-2 BPE, recomputing the whole context each token."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    idx = torch.tensor([enc.encode(prompt)])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            idx = torch.cat((idx, hf(idx).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return enc.decode(idx[0].tolist())


def sample(cwd, *args, env=None):
    result = run_script("sample.py", "--device=cpu", "--num_samples=1", "--top_k=1", *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
@needs_gpt2_bpe
def test_gpt2_is_downloaded_once_then_read_from_the_cache_offline(tmp_path, hub, gpt2_folder):
    hub.repos["openai-community/gpt2"] = gpt2_folder
    args = ["--init_from=gpt2", "--start=Hello", "--max_new_tokens=8"]
    online = sample(tmp_path, *args, env=hub.env)
    expected = greedy_text(GPT2LMHeadModel.from_pretrained(gpt2_folder).eval(), "Hello", 8)
    assert online == expected + "\n---------------\n"
    assert [path for path in hub.gets if "/resolve/" in path] == [
        "/openai-community/gpt2/resolve/main/config.json", "/openai-community/gpt2/resolve/main/model.safetensors"]
    hub.shutdown()
    assert sample(tmp_path, *args, env={**hub.env, "HF_HUB_OFFLINE": "1"}) == online


@pytest.mark.slow
def test_a_repository_missing_from_the_hub_is_a_clean_error(tmp_path, hub):
    result = run_script("sample.py", "--device=cpu", "--init_from=gpt2-xl", cwd=tmp_path, env=hub.env)
    assert_clean_error(result, "cannot download openai-community/gpt2-xl/config.json from the Hugging Face Hub",
                       "Repository Not Found")
