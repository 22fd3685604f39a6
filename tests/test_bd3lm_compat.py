"""BD3-LM checkpoints in and out, tested on folders written here in exactly the hub layout."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from dind import checkpoint as ckpt
from dind.config import ModelConfig
from dind.errors import DindError
from dind.model import DiT
from test_model import reference_shapes

D, N_BLOCKS, HEADS, L, V = 32, 2, 2, 16, 50258


def hub_config(**over) -> dict:
    """BD3-LM's config.json fields for a tiny model."""
    cfg = {"model_type": "bd3lm", "block_size": 4, "vocab_size": V, "model_length": L,
           "cross_attn": True, "adaln": True, "attn_backend": "flex", "causal": False,
           "hidden_dim": D, "cond_dim": 128, "n_blocks": N_BLOCKS, "n_heads": HEADS,
           "dropout": 0.1, "time_conditioning": False, "var_min": True,
           "sampling_eps_min": 0.3, "sampling_eps_max": 0.8}  # fmt: skip
    cfg.update(over)
    return cfg


def hub_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values under the reference key list (the way a hub checkpoint is laid out)."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"backbone.{k}": torch.randn(shape, generator=g) * 0.1
          for k, shape in reference_shapes(V, D, N_BLOCKS, D // HEADS).items()}  # fmt: skip
    sd["backbone.rotary_emb.inv_freq"] = 1.0 / (
        10_000 ** (torch.arange(0, D // HEADS, 2).float() / (D // HEADS))
    )
    sd["sampling_eps_min"] = torch.tensor(0.3)
    sd["sampling_eps_max"] = torch.tensor(0.8)
    return sd


def write_hub_folder(folder, sd=None, config=None, legacy=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or hub_config()))
    sd = hub_weights() if sd is None else sd
    if legacy:
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        save_file(sd, str(folder / "model.safetensors"))
    return folder


def reference_logits(sd, x):
    """The same weights in dind's model, loaded directly (not through the importer)."""
    cfg = ModelConfig(vocab_size=V, mask_id=V - 1, seq_len=L, hidden_dim=D, cond_dim=128,
                      n_blocks=N_BLOCKS, n_heads=HEADS, dropout=0.0)  # fmt: skip
    model = DiT(cfg).eval()
    model.load_state_dict({k[len("backbone."):]: v for k, v in sd.items()
                           if k.startswith("backbone.")})  # fmt: skip
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("legacy", [False, True])
def test_hub_layout_imports_strictly_with_the_same_logits(tmp_path, legacy):
    folder = write_hub_folder(tmp_path / "bd3lm", legacy=legacy)
    ck = ckpt.load_checkpoint(folder)
    x = torch.randint(0, V - 1, (2, L))
    with torch.no_grad():
        got = ck.model(x)
    torch.testing.assert_close(got, reference_logits(hub_weights(), x), rtol=0, atol=0)
    assert (ck.eps_min, ck.eps_max) == pytest.approx((0.3, 0.8))
    assert ck.tokenizer.kind == "gpt2" and ck.tokenizer.mask_id == V - 1
    assert ck.run_config.model.n_blocks == N_BLOCKS and ck.run_config.model.seq_len == L


def test_wrong_shape_or_missing_key_is_named(tmp_path):
    sd = hub_weights()
    sd["backbone.blocks.1.mlp.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(DindError, match=r"shape: backbone\.blocks\.1\.mlp\.0\.weight"):
        ckpt.load_checkpoint(write_hub_folder(tmp_path / "a", sd))
    sd = hub_weights()
    del sd["backbone.output_layer.linear.bias"]
    with pytest.raises(DindError, match=r"missing: backbone\.output_layer\.linear\.bias"):
        ckpt.load_checkpoint(write_hub_folder(tmp_path / "b", sd))


def test_config_that_disagrees_with_the_weights(tmp_path):
    folder = write_hub_folder(tmp_path / "c", config=hub_config(n_blocks=3))
    with pytest.raises(DindError, match=r"missing: backbone\.blocks\.2\."):
        ckpt.load_checkpoint(folder)


def test_pickle_that_needs_more_than_tensors_is_refused(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hub_config()))
    torch.save({"weights": hub_weights(), "note": ModelConfig()}, folder / "pytorch_model.bin")
    with pytest.raises(DindError, match="plain tensors"):
        ckpt.load_checkpoint(folder)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DindError, match="not a checkpoint"):
        ckpt.load_checkpoint(tmp_path / "x")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(DindError, match="lacks the BD3-LM field"):
        ckpt.load_checkpoint(tmp_path / "y")


def test_export_then_import_is_identical(tmp_path):
    src = write_hub_folder(tmp_path / "bd3lm")
    out = ckpt.export_checkpoint(src, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    for k, v in hub_config().items():
        if k not in ("attn_backend", "dropout", "block_size", "sampling_eps_min",
                     "sampling_eps_max"):  # fmt: skip
            assert config[k] == v, k
    assert config["sampling_eps_min"] == pytest.approx(0.3) and "auto_map" in config
    assert (out / "tokenizer.json").exists() and not (out / "training_state.pt").exists()
    a, b = ckpt.load_checkpoint(src), ckpt.load_checkpoint(out)
    x = torch.randint(0, V - 1, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x), rtol=0, atol=0)
    assert set(ckpt.read_weights(out)) == set(hub_weights())
    with pytest.raises(DindError, match="not empty"):
        ckpt.export_checkpoint(src, tmp_path / "export")


@pytest.mark.slow
def test_hub_id_offline_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run(
        [sys.executable, "-m", "dind.cli", "sample", "--checkpoint",
         "kuleshov-group/bd3lm-owt-block_size4", "--out", str(tmp_path / "s.jsonl")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "cannot download kuleshov-group/bd3lm-owt-block_size4" in res.stderr
    assert not (tmp_path / "s.jsonl").exists()
