"""Training throughput: our trainer's step against the ``transformers`` model in a plain PyTorch loop.

Both sides train the same model (same config, same initial weights) on the same batch on the same
machine, with AdamW (fused on CUDA, foreach on the CPU) and gradient clipping at 1.0:

- ``transformers loop`` (the baseline): ``MistralForCausalLM`` (SDPA attention), ``model(input_ids,
  labels=...).loss.backward()``, ``clip_grad_norm_``, ``optimizer.step()``;
- ``lqs TrainStep``: :class:`lqs_megatron.training.step.TrainStep`, what ``lqs pretrain`` runs per
  step (our decoder, the fused per-example loss that never holds ``B x T x V`` logits, tp-aware
  clipping, the warmup-cosine schedule).

On CUDA both run under bf16 autocast (``--compile`` compiles both models). Tokens/s and the ratio
are printed; on CUDA also the model-FLOPs utilisation against ``--peak-tflops`` (989 = H100 dense
bf16) with the formula ``MFU = tokens/s * (6 N + 12 n_layers n_heads head_dim T) / peak``, ``N`` the
parameters that enter matmuls (all but the input embedding and the norms).

    python benchmarks/bench_train.py                    # CPU: a small model (d=256, 4 layers, V=8192, T=256)
    python benchmarks/bench_train.py --device cuda      # GPU: the papers' 160M at T=1024, bf16
"""

from __future__ import annotations

import torch

from lqs_megatron.models.config import ModelConfig, load_model_config
from lqs_megatron.models.hf import config_to_hf, state_dict_to_hf
from lqs_megatron.models.loading import build_model
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.loss import CausalLMLoss
from lqs_megatron.training.optim import WarmupCosine, build_optimizer
from lqs_megatron.training.pretrainer import lm_micro_batches
from lqs_megatron.training.step import TrainStep

from _harness import Table, main_guard, parser, record

CPU_MODEL = dict(hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8, num_kv_heads=4)
TINY_MODEL = dict(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2)


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that enter matmuls: everything but the input embedding and the norm weights."""
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    return cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size - norms


def flops_per_token(cfg: ModelConfig, seq: int) -> float:
    return 6 * matmul_params(cfg) + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq


def hf_step_fn(cfg: ModelConfig, state: dict, tokens: torch.Tensor, dev: torch.device, amp, compile: bool):
    import transformers

    hf_cfg = config_to_hf(cfg)
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.MistralForCausalLM(hf_cfg).to(dev)
    model.load_state_dict(state_dict_to_hf(state, cfg))
    model.train()
    fwd = torch.compile(model) if compile else model
    kw = {"fused": True} if dev.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, **kw)
    inputs = tokens[:, :-1]  # HF shifts the labels inside: predictions for positions 1..T-1 of the inputs

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = fwd(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def ours_step_fn(model, tokens: torch.Tensor, dev: torch.device, amp: bool, compile: bool):
    dims = ParallelDims(device=dev)
    opt = build_optimizer(model, lr=1e-4)
    loss_module = CausalLMLoss(torch.compile(model) if compile else model)
    amp_dtype = torch.bfloat16 if amp else None
    step_fn = TrainStep(loss_module, dims, opt, WarmupCosine(1e-4, 1e-5, 0, 10**9), 1.0, amp_dtype)
    counter = iter(range(10**9))
    micro = lm_micro_batches(tokens.to(dev), tokens.shape[0])
    return lambda: step_fn(micro, tokens.shape[0], next(counter)).loss


def run(args):
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    if args.tiny:
        args.seq, args.batch, args.reps, args.vocab_size = args.seq or 32, args.batch or 2, 1, 512
    if args.model_config:
        cfg = load_model_config(args.model_config, vocab_size=args.vocab_size)
    elif args.tiny:
        cfg = ModelConfig(vocab_size=args.vocab_size, **TINY_MODEL)
    elif on_gpu:
        cfg = load_model_config("160M", vocab_size=args.vocab_size)
    else:
        cfg = ModelConfig(vocab_size=args.vocab_size, **CPU_MODEL)
    seq = args.seq or (1024 if on_gpu else 256)
    batch = args.batch or (16 if on_gpu else 8)
    amp = on_gpu and not args.fp32
    torch.manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=dev)
    ours = build_model(cfg, None, seed=0, device=dev)
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    n_tok = batch * seq
    title = (
        f"training step: {cfg.num_parameters() / 1e6:.1f}M params (d={cfg.hidden_size}, {cfg.num_layers} layers, "
        f"V={cfg.vocab_size}), B={batch}, T={seq}, {'bf16 autocast' if amp else 'fp32'}"
        f"{', torch.compile' if args.compile else ''}"
    )
    table = Table(title, ["transformers loop"], args)
    case = f"B={batch} T={seq}"
    fns = {
        "transformers loop": hf_step_fn(cfg, state, tokens, dev, amp, args.compile),
        "lqs TrainStep": ours_step_fn(ours, tokens, dev, amp, args.compile),
    }
    rows = table.case(case, fns, memory=not args.no_memory)
    table.finish()
    print("| implementation | tokens/s | vs transformers |" + (" MFU |" if on_gpu else ""))
    print("|---|---|---|" + ("---|" if on_gpu else ""))
    ctx = dict(params_m=round(cfg.num_parameters() / 1e6, 1), batch=batch, seq=seq, amp=amp, compile=args.compile)
    fig = "pretrain-compile" if args.compile else "pretrain"
    for r in rows:
        tps = n_tok / (r.ms / 1e3)
        mfu = tps * flops_per_token(cfg, seq) / (args.peak_tflops * 1e12)
        line = f"| {r.name} | {tps:,.0f} | {rows[0].ms / r.ms:.2f}x |"
        if on_gpu:
            line += f" {mfu:.1%} |"
        print(line)
        key = "ours" if r.name == "lqs TrainStep" else "transformers"
        record(args, f"{fig}.{key}.tokens_per_s", tps, "tokens/s", **ctx)
        record(args, f"{fig}.{key}.mfu", mfu, f"of {args.peak_tflops:g} TFLOP/s", **ctx)
        if r.peak_mib == r.peak_mib:  # measured (not --no-memory)
            record(args, f"{fig}.{key}.peak_mib", r.peak_mib, "MiB", **ctx)
    record(args, f"{fig}.speedup", rows[0].ms / rows[1].ms, "x transformers loop", **ctx)
    print(
        f"\nFLOPs/token = 6 N + 12 n_layers n_heads head_dim T = 6 x {matmul_params(cfg):,} + 12 x {cfg.num_layers}"
        f" x {cfg.num_heads} x {cfg.head_dim} x {seq} = {flops_per_token(cfg, seq):.4g}"
        + (f"; MFU against {args.peak_tflops:g} TFLOP/s" if on_gpu else "")
    )


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model-config", help="named config or YAML (default: 160M on CUDA, a small model on the CPU)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary (default: 32000 on CUDA, 8192 on CPU)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sample (default: 1024 on CUDA, 256 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default: 16 on CUDA, 8 on CPU)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for the MFU (H100)")
    p.set_defaults(reps=5)
    a = p.parse_known_args()[0]
    if a.vocab_size is None:
        p.set_defaults(vocab_size=32000 if a.device.startswith("cuda") else 8192)
    main_guard(run, p)
