"""Every knob of a jaxgpt run, with its default. Size files import this and override a few keys."""

import ml_collections

from jaxgpt.config.run import DEFAULT_RULES


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Start from existing weights: "hf:PATH" (a Hugging Face GPT-2 folder) or "workdir:PATH"
    # (a jaxgpt run). They fix the model's shape and tokenizer; "" = random initialization.
    c.init_from = ""

    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 0  # 0 = take the tokenizer's vocabulary size (rounded up, see below)
    c.model.vocab_multiple = 64  # pad a derived vocab size to a multiple of this (faster matmuls)
    c.model.block_size = 1024  # context length T
    c.model.n_layer = 12  # transformer blocks L
    c.model.n_head = 12  # attention heads H
    c.model.n_embd = 768  # residual width D (head dim Q = D / H)
    c.model.dropout = 0.0  # dropout on embeddings, attention output and MLP output
    c.model.bias = True  # biases in Dense and LayerNorm layers (GPT-2 has them)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # master weight dtype
    c.model.remat = "none"  # rematerialization per block: none | full | dots | names
    # remat=names: tensors kept for the backward pass, any of qkv, attn_out, attn_proj, mlp_fc,
    # mlp_gelu, mlp_proj (everything else is recomputed)
    c.model.remat_names = ("qkv", "attn_out")
    c.model.scan_layers = False  # one scanned block instead of L unrolled ones (faster compile)
    # attention implementation: auto | xla | cudnn | einsum (auto: cuDNN flash attention on GPU
    # in 16-bit, einsum on CPU, XLA elsewhere)
    c.model.attention = "auto"
    # Output projection + cross-entropy over chunks of this many sequence positions (every row
    # of the batch in each chunk), so the [batch, seq, vocab] logits are never whole in memory;
    # 0 = all at once
    c.model.loss_chunk = 0
    # Architecture switches. The defaults are GPT-2; a Llama-style model (configs/llama_*.py)
    # sets position=rope, norm=rmsnorm, mlp=swiglu, bias=False and usually n_kv_head and
    # tie_embeddings. Export picks the Hugging Face architecture from them (docs/deploy.md).
    c.model.position = "learned"  # learned (a wpe table, GPT-2) | rope (rotary, no table)
    c.model.rope_theta = 10000.0  # rope: base θ of the rotation frequencies
    c.model.norm = "layernorm"  # layernorm (GPT-2) | rmsnorm (scale only, no mean, no bias)
    c.model.norm_eps = 1e-5  # epsilon of every norm
    c.model.mlp = "gelu"  # gelu (GPT-2) | swiglu (gated SiLU, Llama) | relu2 (ReLU squared)
    # MLP hidden width F; 0 = 4·n_embd, or for swiglu 8·n_embd/3 rounded up to a multiple of 64
    c.model.mlp_hidden = 0
    # key/value heads K for grouped-query attention (must divide n_head); 0 = n_head
    c.model.n_kv_head = 0
    c.model.tie_embeddings = True  # output projection = token embedding; False adds lm_head
    c.model.qk_norm = False  # RMSNorm on each head's queries and keys before attention (Qwen3)
    # Document masking for packed rows: a token attends only to its own document, and its
    # position (rope or learned) counts from the document's start. Documents are found from the
    # tokens: each end-of-text token (appended after every document) opens the next one. The
    # data format does not change.
    c.model.doc_mask = False
    c.model.eot_id = -1  # the end-of-text token id; -1 = the tokenizer's (set at setup)

    c.data = ml_collections.ConfigDict()
    # Comma list of kind:path (path may be a glob): text:, jsonl:, tfds:NAME[/CONFIG][:SPLIT],
    # wiki: (MediaWiki XML dump), wet: (Common Crawl WET), warc: (WARC: main text of HTML
    # pages; needs jaxgpt[web]), parquet: (Parquet files),
    # hf:DIR|NAME[:CONFIG] (a Hugging Face dataset saved with save_to_disk, or in the local
    # cache; never downloaded), or a built-in corpus without a path: "stdlib" (the Python
    # standard library's sources), "shakespeare" (tinyshakespeare, 1.1 MB). A mixture weights
    # items with kind:path@weight: each source keeps weight / (largest weight) of its documents,
    # sampled by a hash of each document's text (e.g. "jsonl:web/*.jsonl@1,hf:books@0.25").
    c.data.sources = "stdlib"
    # text: documents to continue (pretraining). sft: JSONL records with a prompt and a
    # completion; the loss counts completion tokens only (one record per row, padded).
    c.data.format = "text"
    c.data.prompt_field = "prompt"  # sft: the field holding the prompt
    c.data.completion_field = "completion"  # sft: the field holding the completion
    c.data.path = ""  # prepared data dir; "" = WORKDIR/data
    c.data.text_split = "file"  # text sources: one document per "file" or per "blank_line" block
    c.data.jsonl_field = "text"  # jsonl sources: the field holding the text
    c.data.tfds_data_dir = ""  # tfds sources: local data_dir ("" = $TFDS_DATA_DIR or default)
    c.data.tfds_text_field = "text"  # tfds sources: the feature holding the text
    c.data.parquet_column = "text"  # parquet sources: the (string) column holding the text
    c.data.hf_split = "train"  # hf sources: the split to read (a saved single Dataset: all of it)
    c.data.hf_field = "text"  # hf sources: the field (column) holding the text
    # wiki sources: "fast" (a hand-written wikitext stripper, ~20x faster) or "mwparserfromhell"
    # (a full parser, kept as the exact reference)
    c.data.wiki_parser = "fast"
    # text and JSONL files without a byte-order mark that are not UTF-8: decode them as the
    # charset-normalizer detector finds (True), or replace bad bytes and count them (False)
    c.data.detect_encoding = False
    c.data.stdlib_max_mb = 8.0  # size cap of the built-in Python-stdlib corpus
    c.data.val_fraction = 0.1  # share of documents (or of each document's tail) held out
    c.data.split = "auto"  # document (by hash) | tail (of each document) | auto (by doc count)
    c.data.strict = False  # fail at the first bad input (file:line) instead of counting it
    c.data.shard_mb = 256.0  # size of one token shard file
    c.data.workers = 0  # worker processes (local engine; ray: CPUs of a Ray started here); 0 = all
    c.data.engine = "local"  # local (processes on this machine) | ray (Ray Data; docs/data.md)
    c.data.ray_address = ""  # engine=ray: "" = start Ray here, "auto" = this cluster, HOST:PORT
    c.data.clean = ml_collections.ConfigDict()
    c.data.clean.normalization = "NFC"  # Unicode normalization: NFC | NFKC | none
    c.data.clean.min_chars = 1  # drop documents shorter than this after cleaning
    c.data.clean.max_chars = 10_000_000  # drop (not truncate) documents longer than this
    c.data.clean.collapse_spaces = False  # collapse space/tab runs inside a line (indent kept)
    c.data.clean.strip_trailing_whitespace = True  # strip whitespace at the end of every line
    c.data.clean.max_blank_lines = 2  # longer runs of blank lines shrink to this; -1 keeps all
    c.data.clean.strip_blank_edges = True  # drop blank lines at a document's start and end
    c.data.clean.min_words = 0  # drop documents with fewer whitespace-separated words
    c.data.clean.max_line_chars = 0  # drop documents with a longer line (minified code); 0 = off
    # drop documents where more than this share of characters is U+FFFD (bad decoding); 1 = off
    c.data.clean.max_replacement_fraction = 1.0
    # Quality filters for web text (docs/data.md), all off; a drop counts as quality_<rule>.
    c.data.quality = ml_collections.ConfigDict()
    c.data.quality.gopher_repetition = False  # repeated lines, paragraphs, n-grams (Gopher)
    c.data.quality.gopher_quality = False  # word count/length, symbols, bullets, stop words
    c.data.quality.c4 = False  # remove C4's bad lines; drop lorem ipsum, "{", < 5 sentences
    c.data.quality.fineweb = False  # line punctuation, short lines, repeats, newlines (FineWeb)
    c.data.quality.language = False  # keep only `languages` (needs Resiliparse: jaxgpt[web])
    c.data.quality.languages = "en"  # comma-separated ISO 639-1 codes the language filter keeps
    c.data.quality.max_rank = 1200  # language filter: drop when less sure (out-of-place rank)
    c.data.dedup = ml_collections.ConfigDict()
    c.data.dedup.exact = True  # drop documents whose normalized text was seen before
    c.data.dedup.near = True  # drop near duplicates (MinHash + LSH)
    c.data.dedup.threshold = 0.8  # estimated Jaccard similarity that counts as near duplicate
    c.data.dedup.num_perm = 128  # MinHash permutations: more is more accurate and slower
    c.data.dedup.shingle_size = 5  # words per shingle (1..8)
    c.data.dedup.seed = 1  # MinHash permutation seed; fixed so the kept set is reproducible
    c.data.tokenizer = ml_collections.ConfigDict()
    c.data.tokenizer.model_type = "bpe"  # SentencePiece model: bpe | unigram | char
    c.data.tokenizer.vocab_size = 50257  # target vocabulary, specials included (char: 0 = exact)
    c.data.tokenizer.train_mb = 20.0  # megabytes of training text sampled to train it
    c.data.tokenizer.path = ""  # an existing SentencePiece .model or HF tokenizer.json to use
    c.data.tokenizer.eot_token = ""  # tokenizer.json: end-of-text token ("" = find a usual one)

    c.opt = ml_collections.ConfigDict()
    # adamw | adam | adabelief | muon (Muon for the kernels inside transformer blocks, AdamW
    # with the keys below for embeddings, the output layer, norms and biases)
    c.opt.name = "adamw"
    c.opt.lr = 6e-4  # peak learning rate
    c.opt.min_lr = 6e-5  # learning rate at the end of decay
    c.opt.schedule = "cosine"  # cosine | linear | constant | wsd (warmup-stable-decay)
    c.opt.warmup_steps = 2000  # linear warmup from 0 to lr
    c.opt.decay_steps = 0  # steps until min_lr is reached; 0 = train.steps
    c.opt.wsd_decay_fraction = 0.2  # wsd: last fraction of decay_steps spent decaying
    c.opt.b1 = 0.9  # first-moment decay
    c.opt.b2 = 0.95  # second-moment decay
    c.opt.eps = 1e-8  # denominator epsilon
    c.opt.weight_decay = 0.1  # decoupled weight decay (adamw, adabelief)
    c.opt.decay_embeddings = False  # also decay the token/position embeddings
    c.opt.grad_clip = 1.0  # global-norm clipping threshold; 0 = off
    c.opt.muon_lr = 0.02  # muon: peak learning rate of the Muon branch (same schedule shape)
    c.opt.muon_momentum = 0.95  # muon: Nesterov momentum
    c.opt.muon_ns_steps = 5  # muon: Newton-Schulz iterations that orthogonalize each update
    c.opt.muon_weight_decay = 0.0  # muon: decoupled weight decay of the Muon branch

    c.train = ml_collections.ConfigDict()
    c.train.steps = 600_000  # optimizer steps (when train.epochs is 0)
    # > 0: train this many passes over the prepared training data; the run derives the number
    # of steps from the data and the batch, and train.steps is not used. 0 = train.steps.
    c.train.epochs = 0
    c.train.batch_size = 480  # global batch in sequences (all processes, all microbatches)
    c.train.microbatches = 1  # gradient accumulation: batch_size is split into this many parts
    c.train.seed = 0  # seeds init, dropout and the batch order
    c.train.log_every = 10  # steps between metrics.jsonl lines
    c.train.eval_every = 1000  # steps between validation runs (0 = only at the end)
    c.train.eval_tokens = 1_048_576  # validation tokens per evaluation (fixed windows)
    c.train.eval_batch_size = 0  # sequences per eval batch; 0 = train.batch_size / microbatches
    c.train.sample_tokens = 64  # tokens generated after each eval (0 = none)
    c.train.sample_prompt = ""  # prompt of that sample ("" = start from end-of-text)
    c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = look up by device kind
    c.train.early_stop_patience = 0  # stop after this many evals without a new best; 0 = off
    # A step whose loss or gradient norm is NaN or infinite is never applied (the state keeps its
    # last good values). "stop": end the run there, exit 1, no checkpoint past the last good one.
    # "skip": go on (step counter and batch order advance) until train.max_skipped in a row.
    c.train.on_nonfinite = "stop"
    c.train.max_skipped = 10  # "skip": consecutive skipped steps that end the run
    # lm-evaluation-harness tasks at each evaluation (pip install 'jaxgpt[eval]'): their scores
    # go next to eval_loss, as task/<task>/<metric> (metrics.jsonl, TensorBoard, W&B).
    # Loglikelihood kinds only (multiple_choice, loglikelihood, loglikelihood_rolling); tasks
    # that generate are refused at the start. See docs/evaluation.md.
    c.train.eval_tasks = ""  # comma-separated lm-eval task names ("" = none)
    c.train.eval_tasks_path = ""  # local folder of task YAMLs (lm-eval's --include_path)
    c.train.eval_tasks_limit = 0  # documents per task at each evaluation (0 = all)
    # Weights & Biases tracking (pip install 'jaxgpt[wandb]'): process 0 logs the resolved
    # config, the metrics.jsonl scalars, the eval samples, the loss plot and the summary; a
    # resumed run continues the same W&B run (its id is kept in WORKDIR/wandb.json).
    c.train.wandb = ml_collections.ConfigDict()
    c.train.wandb.project = ""  # W&B project; "" = no tracking (the default)
    c.train.wandb.entity = ""  # W&B user or team ("" = your default entity)
    c.train.wandb.name = ""  # run name shown in W&B ("" = W&B picks one)
    c.train.wandb.tags = ()  # run tags, e.g. ("baseline", "v2"); on the command line: a,b
    # online | offline (files under WORKDIR/wandb, no account; upload with `wandb sync`) |
    # disabled | "" (= $WANDB_MODE, else online)
    c.train.wandb.mode = ""

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size (-1 = all devices left over)
    c.mesh.fsdp = 1  # fully sharded data-parallel axis size (params, grads, optimizer sharded)
    c.mesh.tensor = 1  # tensor-parallel axis size (heads, MLP and vocab split)
    # CPU runs: devices the host is split into (0 = auto: one per core, at most 8, dividing the
    # batch; 1 = one device on all cores). Ignored when XLA_FLAGS sets a device count.
    c.mesh.cpu_devices = 0
    # Logical axis -> mesh axes, as (name, mesh axis | None | tuple of axes) pairs. Params use
    # vocab/embed/heads/kv/mlp/norm/pos/layers; activations use the act_* names. The default
    # (jaxgpt/config/run.py) puts the batch on data × fsdp, embed on fsdp, and vocab, heads and
    # mlp (and their activations) on tensor; everything else is replicated.
    c.mesh.rules = DEFAULT_RULES

    c.dist = ml_collections.ConfigDict()
    c.dist.enabled = True  # join a multi-process job when one is configured or detected
    c.dist.coordinator = ""  # HOST:PORT of process 0 ("" = $JAXGPT_COORDINATOR or auto-detect)
    c.dist.num_processes = 0  # processes in the job (0 = $JAXGPT_NUM_PROCESSES)
    c.dist.process_id = -1  # this process's index (-1 = $JAXGPT_PROCESS_ID)
    c.dist.initialization_timeout_s = 300  # how long to wait for every process to join
    c.dist.heartbeat_timeout_s = 100  # a process silent this long fails the whole job

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every = 1000  # steps between checkpoints (one is always written at the end)
    c.ckpt.keep = 3  # checkpoints kept
    c.ckpt.async_save = True  # write checkpoints in the background while training goes on
    # Also keep the params of the best validation loss in WORKDIR/best; generate, evaluate and
    # export then use them unless given --step.
    c.ckpt.keep_best = False

    return c
