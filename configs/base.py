"""Every default of a jaxfrontier run, documented once.

Sections: `model` (only what changes the function the network computes: what a Hugging
Face export writes and what a resumed checkpoint must match), `objective` (what the loss
rewards: loss terms, weights, schedules), `compute` (how the step runs: kernels, remat,
scan, MoE dispatch), `mesh`, `train`, `optim`, `data`, `checkpoint`, `precision`, `logging`.

Family files (`configs/llama3.py`, ...) start from `get_config()` here and set only
what differs. Any field can be overridden on the command line: `--config.train.steps=200
--config.optim.lr=3e-4`. The returned config is locked, so a misspelt override key fails
with the key named, and a key that moved to another section (configs/moved.py) with its
new home.
"""

import ml_collections

from configs import moved as moved_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # ---------------------------------------------------------------- model
  m = c.model = ml_collections.ConfigDict()
  m.family = ""  # HF name-map key ("llama3", "qwen3", ...); informational.
  m.vocab_size = 512  # rows of the embedding table (>= tokenizer vocab).
  m.max_len = 0  # longest prompt + generation served (HF max_position_embeddings); 0: no limit.
  m.embed_dim = 256  # residual stream width d.
  m.num_layers = 4
  m.num_heads = 8  # query heads.
  m.num_kv_heads = 8  # key/value heads: = num_heads MHA, 1 MQA, between GQA.
  m.head_dim = 0  # 0 -> embed_dim // num_heads.
  m.mlp_dim = 1024  # gated-MLP hidden width.
  m.activation = "silu"  # silu (SwiGLU) | gelu_tanh (GeGLU).
  m.mlp_bias = False
  m.norm = "rms"  # rms: x/rms(x)*w | rms_one_plus: x/rms(x)*(1+w) (Gemma, Qwen3-Next).
  m.norm_eps = 1e-6
  m.norm_placement = "pre"  # pre (Llama) | post (OLMo 2: norm after each sublayer,
  #   inside the residual) | sandwich (Gemma 3: both) | deepnorm (MiniMax-01: the
  #   residual stream itself is normed, x = norm(x); x = alpha*x + beta*sublayer(x)).
  # Residual scales: x <- alpha*x + beta*sublayer(...) around each sublayer (any
  # placement; MiniMax-01 uses deepnorm with alpha = (2 * num_layers)**0.25, beta 1).
  m.residual_scale = ml_collections.ConfigDict()
  m.residual_scale.attn_alpha = 1.0  # softmax-attention layers
  m.residual_scale.attn_beta = 1.0
  m.residual_scale.linear_alpha = 1.0  # linear-attention layers
  m.residual_scale.linear_beta = 1.0
  m.residual_scale.mlp_alpha = 1.0  # the FFN (dense or MoE) of every layer
  m.residual_scale.mlp_beta = 1.0
  m.qk_norm = "none"  # none | head (RMSNorm over head_dim, Qwen3/Gemma 3) | full (over
  #   all heads at once, OLMo 2) | l2_rope_layers (unscaled, RoPE layers only, Llama 4).
  m.qkv_bias = False  # bias on the q/k/v projections (Qwen2).
  m.out_bias = False  # bias on the attention output projection.
  m.attention_sinks = False  # learned per-head logit in the softmax denominator (gpt-oss).
  m.attn_logit_softcap = 0.0  # >0: logits = cap*tanh(logits/cap) before masking (Gemma 2).
  m.final_logit_softcap = 0.0  # >0: same on the output logits.
  m.logit_scale = 1.0  # multiplies the output logits, before final_logit_softcap (Grok: 0.5).
  m.query_pre_attn_scalar = 0.0  # >0: attention scale = this**-0.5 instead of head_dim**-0.5.
  m.embed_scale = False  # multiply embeddings by sqrt(embed_dim) (Gemma).
  m.tie_embeddings = False  # output head reuses the embedding table.
  # Layer patterns: layer i uses pattern[i % len(pattern)]. The decoder scans
  # over the least common period of all patterns.
  m.attention_pattern = ("global",)  # entries: global | local (sliding window)
  #   | chunked (Llama 4: attend only within the same attention_chunk block)
  #   | linear (linear attention, model.linear.*).
  m.rope_pattern = ("rope",)  # entries: rope | nope (no positional encoding; for MLA
  #   the rope dims stay unrotated, as Kimi Linear).
  m.sliding_window = 0  # window of `local` layers: query i sees keys j with i-j < window.
  m.attention_chunk = 0  # `chunked` layers: query i sees keys j with i//chunk == j//chunk.
  # Llama 4 temperature tuning on `nope` layers: q *= 1 + scale*ln(1 + floor((pos+1)/floor)).
  m.nope_temperature_scale = 0.0  # 0 = off.
  m.nope_temperature_floor = 8192
  m.rope_theta = 10_000.0
  m.local_rope_theta = 0.0  # >0: `local` layers use this theta and no scaling (Gemma 3).
  m.partial_rotary_factor = 1.0  # fraction of head_dim that is rotated.
  m.rope_interleave = False  # rotate pairs (2i, 2i+1) (Llama 4) instead of (i, i+d/2).
  m.rope_scaling = ml_collections.ConfigDict()
  m.rope_scaling.type = "none"  # none | linear | llama3 | yarn.
  m.rope_scaling.factor = 1.0  # context extension factor s.
  m.rope_scaling.original_max_position = 8192  # pretraining context (llama3, yarn).
  m.rope_scaling.low_freq_factor = 1.0  # llama3.
  m.rope_scaling.high_freq_factor = 4.0  # llama3.
  m.rope_scaling.beta_fast = 32.0  # yarn correction range.
  m.rope_scaling.beta_slow = 1.0  # yarn.
  m.rope_scaling.attention_factor = 0.0  # yarn: 0 -> 0.1*ln(s)+1.
  m.rope_scaling.truncate = True  # yarn: round the correction range to whole dims (False: gpt-oss).
  m.v_norm = False  # values RMS-normed over head_dim without a scale (Gemma 3n).
  # KV sharing (Gemma 3n): the last N layers compute no K/V and attend to the K/V of
  # the last earlier layer of their attention_pattern kind.
  m.kv_shared_layers = 0
  m.mlp_dims = ()  # per-layer FFN widths (one per layer; () = mlp_dim everywhere).
  # Gate sparsity of the dense FFN of layer i (entry i; layers past the tuple: 0):
  # only gate values above mean + std * Phi^-1(s) of the token stay (Gemma 3n: 0.95
  # on the first 10 layers).
  m.activation_sparsity = ()
  # AltUp (Gemma 3n): the residual is num_inputs streams; each layer runs on the
  # active one and AltUp's predict / correct mixes the others; a rank-laurel_rank
  # LAuReL bypass beside attention; per-layer embeddings (model.per_layer_input)
  # gated into the streams after each layer. 0 = off.
  m.altup = ml_collections.ConfigDict()
  m.altup.num_inputs = 0
  m.altup.active_idx = 0
  m.altup.coef_clip = 120.0  # |prediction / correction coefficients| <= this.
  m.altup.correct_scale = True  # learned scale on the corrected active stream.
  m.altup.laurel_rank = 64
  # Per-layer embeddings (PLE, Gemma 3n; with model.altup): a [vocab_size,
  # num_layers * dim] table plus a projection of the token embedding, one dim-wide
  # slice per layer.
  m.per_layer_input = ml_collections.ConfigDict()
  m.per_layer_input.dim = 256
  m.per_layer_input.vocab_size = 0  # 0 = model.vocab_size; ids past it read row 0.
  # Gated attention (Qwen3-Next): q_proj also emits a gate per head ([query | gate]),
  # and each head's output is multiplied by sigmoid(gate) before o_proj.
  m.attention_gate = False
  # Linear-attention layers (attention_pattern entry "linear"): the gated delta
  # rule (modeling/attention/linear.py).
  m.linear = ml_collections.ConfigDict()
  # gated_deltanet (Qwen3-Next: one decay per head, fused qkvz projection) | kda
  # (Kimi Delta Attention, Kimi Linear: one decay per key channel, num_k_heads ==
  # num_v_heads, k_head_dim == v_head_dim) | lightning (MiniMax-01: no delta rule,
  # a fixed ALiBi-slope decay per head shrinking with depth; heads and dims equal
  # as for kda; no conv, conv_kernel unused).
  m.linear.kind = "gated_deltanet"
  m.linear.num_k_heads = 16  # query/key heads ...
  m.linear.num_v_heads = 32  # ... each serving num_v_heads / num_k_heads value heads.
  m.linear.k_head_dim = 128
  m.linear.v_head_dim = 128
  m.linear.conv_kernel = 4  # causal depthwise conv over q, k, v.
  m.linear.chunk = 64  # chunk length of the parallel (training) form.
  # Attention kind: gqa (MHA/GQA/MQA by num_kv_heads) | mla (multi-head latent attention).
  m.attention = "gqa"
  m.mla = ml_collections.ConfigDict()
  m.mla.q_lora_rank = 0  # 0 = plain query projection (DeepSeek-V2-Lite).
  m.mla.kv_lora_rank = 512  # compressed KV latent width (cached at decode).
  m.mla.qk_nope_head_dim = 128  # per-head query/key dims without RoPE.
  m.mla.qk_rope_head_dim = 64  # per-head query dims with RoPE; one shared RoPE key.
  m.mla.v_head_dim = 128
  m.mla.rope_interleave = (
    False  # rope pairs (2i, 2i+1) as in DeepSeek checkpoints; else half-split.
  )
  m.mla.mscale_all_dim = 0.0  # YaRN: softmax scale *= (0.1*mscale_all_dim*ln(s)+1)^2 if > 0.
  # DeepSeek Sparse Attention (V3.2): a lightning indexer picks each query's top-k keys.
  m.mla.indexer = ml_collections.ConfigDict()
  m.mla.indexer.num_heads = 0  # indexer heads (V3.2: 64); 0 = dense MLA, no indexer.
  m.mla.indexer.head_dim = 128
  m.mla.indexer.topk = 2048  # keys per query.
  # RoPE on the indexer's leading dims: half-split pairs (V3.2) or interleaved (GLM-5).
  m.mla.indexer.rope_interleave = False
  m.mla.indexer.fp8 = False  # Hadamard + E4M3 (one scale per head_dim vector) on q/k.
  # FFN kind per layer: layer i uses ffn_pattern[i % len] after the first
  # `first_dense_layers` layers, which are always dense.
  m.ffn_pattern = ("dense",)  # entries: dense | moe.
  m.first_dense_layers = 0
  m.moe = ml_collections.ConfigDict()
  m.moe.num_experts = 0  # routed experts E.
  m.moe.top_k = 2  # experts per token.
  m.moe.expert_mlp_dim = 0  # each routed expert's gated-MLP width.
  m.moe.router = "softmax"  # softmax | sigmoid | softmax_topk (softmax over the top-k logits).
  m.moe.router_softcap = 0.0  # >0: router logits = cap*tanh(logits/cap) before scoring (Grok: 30).
  m.moe.norm_topk = True  # renormalise the selected weights to sum to 1.
  m.moe.n_group = 1  # group-limited routing: E experts in n_group groups ...
  m.moe.topk_group = 1  # ... of which each token may use the best topk_group.
  m.moe.routed_scaling = 1.0  # multiplies the routed weights (DeepSeek-V3: 2.5).
  m.moe.router_bias = False  # learned bias on the router logits (gpt-oss).
  m.moe.aux_free_bias = False  # selection-only bias, updated each step by the sign rule
  #   (objective.moe_bias_update_rate).
  m.moe.num_shared_experts = 0  # always-on experts, fused into one MLP.
  m.moe.shared_mlp_dim = 0  # width of that MLP; 0 = num_shared_experts * expert_mlp_dim.
  m.moe.shared_gate = False  # sigmoid gate on the shared expert (Qwen2-MoE).
  m.moe.output_scale = 1.0  # multiplies the layer output, routed + shared experts together
  #   (Grok's residual MoE: (moe + mlp) / sqrt(2)).
  m.moe.activation = "silu"  # silu (SwiGLU) | gelu_tanh (GeGLU, Grok) | clamped_swiglu
  #   (gpt-oss); the shared expert uses it too (silu or gelu_tanh).
  m.moe.swiglu_limit = 7.0  # clamped_swiglu: gate <= limit, |up| <= limit.
  m.moe.scale_inputs = False  # routing weight scales the expert's input, FFN(w*x),
  #   instead of its output (Llama 4).
  m.moe.expert_bias = False  # biases on the expert projections.
  # DeepSeek-V3 multi-token prediction: `depth` sequential modules after the
  # trunk, each one more block predicting one token further ahead (weights in
  # objective.mtp_*).
  m.mtp = ml_collections.ConfigDict()
  m.mtp.depth = 0

  # ------------------------------------------------------------ objective
  # What the loss rewards: loss terms, their weights and schedules. Changes training,
  # never the function a given set of weights computes (trainer/objective.py).
  obj = c.objective = ml_collections.ConfigDict()
  obj.z_loss = 0.0  # weight of log(Z)^2 in the loss (PaLM z-loss); 0 = off.
  obj.moe_seq_aux_weight = 0.0  # DeepSeek-V3 sequence-wise balance loss (alpha), summed
  #   over MoE layers.
  obj.moe_switch_aux_weight = 0.0  # Switch/GShard load-balance loss.
  obj.moe_router_z_weight = 0.0  # router z-loss.
  obj.moe_bias_update_rate = 0.001  # gamma of the aux-loss-free sign rule (MoE layers with
  #   model.moe.aux_free_bias): bias += gamma * sign(mean load - load) after each step.
  # MTP (model.mtp.depth > 0): loss = main + w/depth * sum_k L_k, w = mtp_weight until
  # mtp_late_start * train.steps, then mtp_late_weight (DeepSeek-V3: 0.3 then 0.1).
  obj.mtp_weight = 0.3
  obj.mtp_late_weight = 0.1
  obj.mtp_late_start = 1.0  # fraction of train.steps; 1.0 = mtp_weight throughout.
  # DeepSeek Sparse Attention (model.mla.indexer.num_heads > 0), the training stage:
  # warmup (attention stays dense; only the indexers train, on their KL to the
  # attention) | sparse (top-k attention, everything trains; the indexer on its KL).
  obj.indexer_stage = "sparse"
  obj.indexer_kl_weight = 1.0  # weight of the indexers' KL (summed over layers).
  # MatFormer (Gemma 3n): per-layer FFN widths of a nested sub-model trained jointly
  # (modeling/matformer.py): loss = full + matformer_weight * sub, every batch. () = off.
  obj.matformer_dims = ()
  obj.matformer_weight = 1.0

  # -------------------------------------------------------------- compute
  # How the step runs, not what it computes: speed and memory.
  r = c.compute = ml_collections.ConfigDict()
  # Attention implementation, per layer (modeling/attention/kernels.py): auto (CPU:
  # XLA; GPU: cuDNN where it can, else our Pallas kernels; TPU: Pallas) | xla | cudnn |
  # pallas | pallas_interpret (Pallas emulated on CPU, for tests). A choice a layer
  # cannot run is an error before any compile.
  r.attention_kernel = "auto"
  # Repeating layers: scan (one layer body under jax.lax.scan: compile time flat in depth)
  # | unroll (each layer its own code: faster steps, XLA optimises across layers) | auto
  # (unroll <= 16 layers on CPU, 4 elsewhere; pipelines and resumes keep/need the scan).
  r.scan_layers = "auto"
  r.remat = "none"  # each layer's backward recomputes its forward except what it keeps:
  #   none (keeps all) | full (keeps nothing) | save_dots (keeps weight matmul outputs)
  #   | save_attention_outputs (attention outputs) | offload_dots (save_dots, in host RAM).
  r.mla_absorbed = False  # MLA as MQA over [c_kv, k_pe]: same function, decode's layout.
  r.moe_dispatch = "dropless"  # dropless (sort + grouped matmul) | capacity (drops overflow).
  # Dropless grouped matmuls: ragged_dot (XLA's op: a grouped GEMM on TPU, but CPU and
  # CUDA run it densely over every expert) | blocks (each expert's rows padded to
  # blocks of <= 128 rows, one batched matmul) | auto (ragged_dot on TPU, else blocks).
  r.moe_matmul = "auto"
  r.moe_capacity_factor = 1.25  # capacity = factor * tokens * top_k / E.
  # Expert parallelism (mesh.expert > 1), dropless: rows a device may send to one
  # other device. 0 = tokens * top_k (nothing dropped, n-times the mean); f > 0 =
  # f * tokens * top_k / n (less memory and traffic; overflow dropped, counted).
  r.moe_ep_capacity_factor = 0.0
  # Output head + CE (and MTP's) over this many sequence chunks, each recomputed in
  # the backward: one chunk's [batch, seq/chunks, vocab] logits at a time.
  r.loss_chunks = 1
  r.ple_host_memory = False  # Gemma 3n: per-layer embeddings (+ opt state) in pinned host RAM.
  r.cpu_ynnpack = False  # CPU only: matmuls in XLA:CPU's YNNPACK fusions, or its own + Eigen.
  # mesh.stage > 1: 1f1b (interleaved over virtual_stages rounds) | circular (the same
  # rounds, every forward then every backward) | gpipe (one round, forwards first).
  r.pipeline = "1f1b"
  r.virtual_stages = 1  # chunks of layers per stage; train.microbatches >= mesh.stage.

  # ----------------------------------------------------------------- mesh
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # pure data parallelism (params replicated).
  c.mesh.fsdp = -1  # ZeRO-3 style: params and batch sharded. -1 fills the rest.
  c.mesh.tensor = 1  # Megatron-style heads / mlp / vocab sharding.
  c.mesh.expert = 1  # expert parallelism (MoE).
  c.mesh.context = 1  # context parallelism: the sequence split (train.seq_len % 2x it == 0).
  c.mesh.rules = ""  # logical -> mesh axis overrides: "vocab=tensor+fsdp,heads=" (= none).
  c.mesh.stage = 1  # pipeline stages: the scanned layers split in turn (compute.pipeline).
  c.mesh.dcn_data = 1  # slices (TPU) / nodes (GPU processes) mesh.data spans over DCN.
  c.mesh.dcn_fsdp = 1  # the same for mesh.fsdp; each divides its axis.

  # ---------------------------------------------------------------- train
  t = c.train = ml_collections.ConfigDict()
  t.steps = 200
  t.batch_size = 16  # global sequences per step.
  t.microbatches = 1  # gradient accumulation: equal micro-batches per step, one update.
  t.seq_len = 256  # tokens per sequence.
  t.seed = 0  # params init, data order.
  t.init_std = 0.02  # normal init std of every matrix.
  t.log_every = 10  # steps between metrics records.
  t.eval_every = 0  # steps between evals; 0 = only at the end.
  t.eval_batches = 8  # held-out batches per eval.
  t.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = trainer/metrics.py's table.

  # ---------------------------------------------------------------- optim
  o = c.optim = ml_collections.ConfigDict()
  o.name = "adamw"  # adamw | muon (hidden matrices; AdamW for embed, head, router,
  #   norms, biases, sinks; one lr and weight decay for both, Moonlight's scaling).
  o.lr = 3e-3  # peak learning rate.
  o.schedule = "cosine"  # cosine (warmup then cosine decay) | constant (after warmup)
  #   | wsd (warmup, stable, then decay over the last decay_fraction of the steps).
  o.decay_fraction = 0.2  # wsd: share of train.steps spent decaying.
  o.decay_shape = "linear"  # wsd decay: linear | cosine | sqrt (1 - sqrt(progress)).
  o.muon_beta = 0.95  # Muon momentum (Nesterov).
  o.muon_ns_steps = 5  # quintic Newton-Schulz iterations.
  o.muon_rms = 0.2  # Muon update scale 0.2 * sqrt(max(fan_in, fan_out)): AdamW-like RMS.
  # MuonClip's QK-clip (Kimi K2, tau 100): after each update, heads whose largest
  # pre-softmax logit exceeded tau get query/key weights rescaled to bring it to tau.
  # 0 = off. Works with either optimizer; not with model.qk_norm.
  o.qk_clip_tau = 0.0
  # Which per-head maxima decide the clip: forward (Kimi K2: the step's own forward,
  # before the update, no extra cost) | updated (one more forward of the updated
  # weights (and router biases) on the step's batch, +~1/3 of a step: the clipped
  # weights then hold that batch's logits at tau, not tau plus what the update added).
  o.qk_clip_measure = "forward"
  o.warmup_steps = 20
  o.min_lr_ratio = 0.1  # final lr = lr * min_lr_ratio.
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1  # decoupled; matrices only (not norms, biases, sinks).
  o.grad_clip = 1.0  # global-norm clip; 0 = off.
  # Regex over param paths ("stack/blocks/0/attn/indexer/wk"); only matches train,
  # the rest stay frozen. "" = all train (a DSA warm-up stage trains "(^|/)indexer/").
  o.trainable = ""

  # ----------------------------------------------------------------- data
  d = c.data = ml_collections.ConfigDict()
  d.path = ""  # glob of text / JSONL / Parquet / Arrow files, a `datasets.save_to_disk` or a
  #   scripts/prepare_data.py directory; "" = the default corpus (Python stdlib sources).
  d.format = "auto"  # auto (by suffix: .jsonl/.json, .parquet, .arrow; else text) | text (a
  #   file is a document) | jsonl (a line is) | parquet | arrow (a row is) | arrayrecord.
  d.field = "text"  # JSONL key / Parquet or Arrow column holding each document's text.
  d.sources = ()  # instead of path, a weighted mixture: ({path, weight, format, field, name}, ...)
  d.tokenizer = "byte"  # byte: UTF-8 bytes 0..255 plus EOS 256 | path to a tokenizer.json.
  d.eos_token = ""  # tokenizer.json's end-of-document token; "": <|endoftext|>, </s>, ... it has.
  d.eval_fraction = 0.02  # fraction of files held out for eval (by a hash of the path);
  #   a prepared directory has its own eval shards.
  d.skip_bad_records = False  # JSONL lines that are not JSON / UTF-8: error (False) or skip+count.
  # Each train batch is `shards` blocks of rows, block j packed from files[j::shards]; a
  # process reads only its own rows' blocks. 0 = one block per process. Fix it (to a multiple
  # of every process count you will use) to get the same batches on any number of processes.
  d.shards = 0
  # Train rows are shuffled after packing, in windows of this many tokens per block (at most a
  # pass over its input; ~12 bytes a token; 0 = off): else a long document fills whole batches.
  d.shuffle_tokens = 1_048_576
  d.workers = 0  # processes that read + tokenize raw input (grain mp_prefetch); 0 = threads here.

  # ----------------------------------------------------------- checkpoint
  k = c.checkpoint = ml_collections.ConfigDict()
  k.every = 0  # steps between saves into <workdir>/checkpoints; 0 = only at the end.
  k.keep = 3  # most recent checkpoints kept.
  k.keep_every = 0  # also keep every step that is a multiple of this; 0 = none.
  # Saves are asynchronous and commit atomically; SIGTERM saves the current step
  # and exits cleanly; the same command with the same --workdir resumes. A save
  # that fails stops the run at once, naming the last committed step; a state
  # whose loss or grad norm is not finite is never saved.
  # Another run's workdir, or a Hugging Face directory (config.json + safetensors, checked
  # against config.model, read shard by shard), whose weights start a new run here: fresh
  # optimizer, step 0. For fine-tuning, the next stage (DSA warm-up -> sparse) or adding parts
  # (params the source lacks, e.g. MTP modules, keep their init and are listed). "" = scratch.
  k.init_from = ""
  # A newest checkpoint that cannot be read is moved aside (<step>.unreadable) and
  # the step before it restored, with a message; False: stop with the error instead.
  k.fallback = True
  # SIGTERM / SIGINT while training saves the current step and exits; if that takes
  # longer than this (a save blocked on I/O), the run exits without it. A second
  # signal exits at once. The last committed checkpoint is never harmed.
  k.stop_timeout_s = 30.0
  # A save (or the wait for one) that takes longer than this ends the run with one
  # sentence naming the last committed step (a write stuck on a failed disk).
  k.save_timeout_s = 600.0

  # ------------------------------------------------------------ precision
  p = c.precision = ml_collections.ConfigDict()
  p.param_dtype = "float32"  # master weights.
  p.compute_dtype = "bfloat16"  # matmul inputs; norms, softmax and loss stay float32.
  p.opt_state_dtype = "float32"  # first moments (AdamW mu, Muon momentum); DeepSeek: bfloat16.
  # FP8-style training (DeepSeek-V3): linear-layer matmul inputs quantized to E4M3
  # with one scale per 1x128 activation tile / 128x128 weight block, float32
  # accumulation, straight-through gradients. Embedding, head, router, norms and
  # the attention core stay in compute_dtype.
  p.fp8 = False
  p.fp8_grads = "e4m3"  # e4m3 (DeepSeek) | e5m2 (Transformer Engine): dtype of quantized grads.
  p.fp8_dot = "auto"  # qdq (dequantize, then one dot) | blockwise (fp8 operands, one dot per
  #   128 of K, float32 rescale: real fp8 GEMMs on sm_89+ GPUs) | auto (blockwise there).
  p.fp8_pow2_scales = False  # round tile scales up to powers of two (DeepSeek-V3.1 ue8m0).

  # -------------------------------------------------------------- logging
  c.logging = ml_collections.ConfigDict()
  c.logging.progress_bar = True  # tqdm bar on the terminal; metrics.jsonl is always written.
  c.logging.tensorboard = True  # event files in <workdir>/tensorboard (tensorboardX).
  c.logging.wandb = False  # also log to Weights & Biases (needs `pip install wandb`).
  c.logging.wandb_project = "jaxfrontier"
  c.logging.max_logit = False  # log the largest attention logit (always with QK-clip).
  c.logging.profile_steps = ()  # (first, last): a jax.profiler trace in <workdir>/profile.
  return c


# Shared dimensions of the tiny presets (a few M params; trains on a CPU in minutes).
TINY_MODEL = dict(
  vocab_size=384, embed_dim=256, num_layers=4, num_heads=8, num_kv_heads=2, mlp_dim=768
)
# Tiny presets are for CPUs, where XLA's float32 matmuls beat bfloat16 ones.
CPU_PRECISION = dict(compute_dtype="float32")


def from_presets(family: str, presets: dict, name: str) -> ml_collections.ConfigDict:
  """Base config with `presets[name]` applied: {"model": {...}, "train": {...}}."""
  if name not in presets:
    raise ValueError(f"unknown preset {name!r} for {family}; valid presets: {', '.join(presets)}")
  config = get_config()
  config.model.family = family
  for section, fields in presets[name].items():
    for key, value in fields.items():
      if key not in config[section]:
        moved = moved_lib.message(f"{section}.{key}")
        raise ValueError(f"preset {family}:{name}: {moved or f'unknown field {section}.{key}'}")
      if isinstance(value, dict):
        config[section][key].update(value)
      else:
        config[section][key] = value
  config.lock()
  return config
