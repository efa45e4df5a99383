"""The trainer's config sections and their defaults.

A full training config is a ``ml_collections.ConfigDict`` with these top-level keys:

  name            str   run name (shown in logs)
  seed            int   root of the named random streams (``m2dit_jax.rng``): "init" for the
                        parameters, "train" for the steps (step k folds in k)
  init_from       str   weights to start a fresh run from ("" = random init): a diffusers
                        pipeline or transformer folder, an m2dit params folder, or a training
                        workdir / WORKDIR@STEP (see ``m2dit_jax.train.init_from``)
  init_from_weights str "ema" | "params": which weights of a training workdir init_from takes
  model           the model section (``m2dit_jax.model.get_model_config`` fields)
  data            the data section (``m2dit_jax.data.default_data_config`` fields)
  diffusion       schedule / objective options (below)
  optim           optimizer, schedule, clipping, accumulation, EMA (below)
  mesh            data / fsdp / context / tensor sizes; one may be -1 (fills the rest)
  train           loop, logging, checkpointing, profiling (below)
  eval            the held-out evaluation: its own data split, cadence, fixed noise (below)
  distributed     multi-host initialisation (below)
  lora            LoRA fine-tuning: rank (0 = off, full fine-tuning), alpha, targets (below)

``default_trainer_config`` returns every section except ``model`` and ``data``; the config files
in ``configs/`` add those two.
"""

from __future__ import annotations

import ml_collections


def diffusion_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            snr_shift_scale=3.0,  # CogVideoX: 3.0 for 2B, 1.0 for 5B
            num_train_timesteps=1000,
            # Probability of a conditional (scene-extension, mask 2) sample. The objective is the
            # one place mask 2 is sampled (a batch may still carry an explicit `cond` (B, S)).
            p_cond=0.0,
            target_scene="last",  # "last" | "random"
            # Per-scene probability of training on a zeroed caption (classifier-free guidance
            # needs it; the release trains without, so sample it with guidance_scale 1).
            caption_dropout=0.0,
            # Attention of conditional samples: "mask2dit" (release: mask 2 leaves attention
            # alone) or "causal_conditions" (conditions attend only among themselves, what
            # extend(..., cache_conditions=True) needs; mask 2 then drawn per batch, target last).
            cond_mask_mode="mask2dit",
            # Training t density: "uniform" (release) or "logit_normal" (SD3:
            # t = T * sigmoid(logit_mean + logit_std * z)); the held-out loss always uses
            # evenly spaced t.
            timestep_sampling="uniform",
            logit_mean=0.0,
            logit_std=1.0,
            # Per-sample loss weights: "none" (release) or "min_snr" (Min-SNR-gamma on the
            # x0 error, min(SNR, gamma) / (SNR + 1) on the v error); held-out loss unweighted.
            loss_weighting="none",
            min_snr_gamma=5.0,
        )
    )


def optim_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            learning_rate=1e-4,
            warmup_steps=100,
            schedule="constant",  # "constant" | "cosine" | "linear" (after warm-up)
            decay_steps=0,  # length of the cosine/linear decay; 0 = until train.num_steps
            end_lr_factor=0.0,  # final lr = learning_rate * end_lr_factor
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            clip_norm=1.0,  # global-norm clipping; 0 disables
            grad_accum_steps=1,  # micro-batches per optimizer step (batch is split evenly)
            ema_decay=0.999,  # 0 disables the EMA update (EMA stays equal to the init)
            mu_dtype="",  # AdamW first-moment dtype ("" = param dtype, or "bfloat16")
        )
    )


def mesh_defaults() -> ml_collections.ConfigDict:
    # data/fsdp/context/tensor: axis sizes within one TPU slice / GPU node (-1 fills the rest).
    # dcn_<axis>: how many slices/nodes that axis spans (full axis = <axis> * dcn_<axis>);
    #   e.g. 2 v5p-256 slices: dcn_data=2, fsdp=-1.
    # logical_rules: overrides of m2dit_jax.sharding.LOGICAL_RULES, "name=axis1+axis2" entries
    #   separated by commas ("name=" replicates), e.g. "embed=fsdp+tensor, mlp=".
    # num_devices: use only the first N devices (0 = all); for debugging and tests on one host.
    return ml_collections.ConfigDict(
        dict(
            data=1,
            fsdp=-1,
            context=1,
            tensor=1,
            dcn_data=1,
            dcn_fsdp=1,
            dcn_context=1,
            dcn_tensor=1,
            logical_rules="",
            num_devices=0,
        )
    )


def train_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            num_steps=1000,
            # Stop (with a checkpoint) once this many steps are done, as a preemption would;
            # the schedule still spans num_steps. 0 = run to num_steps.
            stop_at_step=0,
            batch_size=8,  # global batch (all processes together)
            log_every=10,
            checkpoint_every=500,
            keep_checkpoints=3,
            async_checkpointing=True,
            checkpoint_on_preemption=True,
            max_consecutive_nonfinite=20,  # stop (with a checkpoint) after this many skips in a row
            # Processes agree on a preemption stop every N steps (a collective when multi-host;
            # checkpoints and the last step always check).
            preemption_check_every=10,
            progress_bar=True,
            profile_start_step=-1,  # >= 0: trace steps [start, start + profile_num_steps)
            profile_num_steps=3,
            peak_tflops_per_device=0.0,  # 0 = from the device kind (CPU: measured matmul rate)
            # Persistent XLA compilation cache shared by runs/processes ("" = off): restarts and
            # preemption resumes skip recompiling the step.
            compilation_cache_dir="",
            tensorboard=True,
            jsonl=True,
        )
    )


def eval_defaults() -> ml_collections.ConfigDict:
    """The held-out evaluation. Its data is the ``data`` section with these overrides; the
    loss uses fixed, evenly spaced timesteps and noise from ``eval.seed`` (``eval_loss_fn``),
    so curves of different runs on the same split are comparable."""
    return ml_collections.ConfigDict(
        dict(
            every=0,  # evaluate every N steps (and at the end); 0 = only at the end
            batches=2,  # held-out batches per evaluation (0 = no evaluation)
            batch_size=0,  # 0 = train.batch_size
            seed=0,  # fixed noise / mask 2 / data order of the evaluation (not config.seed)
            # Where the held-out data comes from ("" = as the training data section):
            source="",
            path="",  # manifest / latents path of the held-out split
            tfds_split="",  # TFDS split, e.g. "validation"
            synthetic_split="heldout",  # synthetic_shapes: held-out scripts (never trained on)
        )
    )


def distributed_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # "auto": initialise when the environment describes a cluster (TPU pod, SLURM,
            # JAX_COORDINATOR_ADDRESS/M2DIT_* variables); "always"; "never".
            initialize="auto",
            coordinator_address="",  # "" = from the environment
            num_processes=0,  # 0 = from the environment
            process_id=-1,  # -1 = from the environment
            cpu_collectives="gloo",  # CPU cross-process collectives (tests, CPU clusters)
        )
    )


def lora_defaults() -> ml_collections.ConfigDict:
    """LoRA (``m2dit_jax.train.lora``): adapters on block Dense kernels, base frozen."""
    return ml_collections.ConfigDict(
        dict(
            rank=0,  # the switch: 0 = off (full fine-tuning); > 0 = LoRA of this rank
            alpha=0.0,  # update scale alpha / rank; 0 = rank (scale 1)
            # Comma-separated regexes searched in each block module's name "blocks/{i}/<module>",
            # module one of attn/to_q|to_k|to_v|to_out, ff/proj_in|proj_out, norm1|norm2/linear.
            # Default: the attention projections of every block; add FF with
            # "...,ff/proj_in$,ff/proj_out$".
            targets="attn/to_q$,attn/to_k$,attn/to_v$,attn/to_out$",
            # A's init (B starts at 0) from the "lora" stream of `seed`: "kaiming_uniform"
            # (peft's default, U(+-1/sqrt(fan_in))) or "gaussian" (N(0, 1/rank^2), peft's option).
            init="kaiming_uniform",
            # Storage dtype of the frozen base weights ("" = model.param_dtype; "bfloat16"
            # halves them; the adapters, their moments and EMA stay float32).
            base_dtype="",
            # peft's lora_dropout: dropout on each adapted layer's input inside the LoRA branch
            # (training only). 0 = off (the step merges the adapters into the kernels); > 0 runs
            # the branches unmerged (a little more activation memory: one mask per target).
            dropout=0.0,
        )
    )


def default_trainer_config() -> ml_collections.ConfigDict:
    """Every trainer section with defaults; configs add ``model`` and ``data``."""
    config = ml_collections.ConfigDict()
    config.name = "m2dit"
    config.seed = 0
    config.init_from = ""
    config.init_from_weights = "ema"
    config.diffusion = diffusion_defaults()
    config.optim = optim_defaults()
    config.mesh = mesh_defaults()
    config.train = train_defaults()
    config.eval = eval_defaults()
    config.distributed = distributed_defaults()
    config.lora = lora_defaults()
    return config
