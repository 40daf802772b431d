"""The CTC model: audio -> log-mel (+ SpecAugment) -> frontend -> encoder -> dropout -> linear -> log-softmax."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dmao.encoders import Encoder, EncoderConfig, Layout
from dmao.encoders.common import starting_block
from dmao.features.cmvn import utterance_normalize
from dmao.features.logmel import LogMelConfig, LogMelFeatures
from dmao.features.specaugment import SpecAugment, SpecAugmentConfig
from dmao.modules.common import GroupedModule, check_probability, dropout
from dmao.modules.frontend import FrontendConfig, VGGFrontend


@dataclass
class ModelConfig:
    features: LogMelConfig = field(default_factory=LogMelConfig)
    specaug: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    final_dropout: float = 0.1
    """Dropout on the encoder output, before the output layer."""
    feature_normalization: Literal["utterance", "none"] = "utterance"
    """``utterance``: zero mean, unit variance per utterance and mel bin before SpecAugment (the frontend has no
    input norm, and raw log-mel values sit around -20)."""
    layout: str = ""
    """Start from another run's layout instead of the uniform one: a run directory or checkpoint (its newest
    checkpoint's layout: a finished DMAO run's final one) or a layout file (YAML or JSON, as ``Layout.to_dict``).
    Retraining DMAO's found layout from scratch separates "the layout is better" from "the growing helps"."""

    def __post_init__(self) -> None:
        check_probability(self, "final_dropout")


def estimate_parameters(cfg: ModelConfig, vocab_size: int) -> int:
    """Parameters of the model of ``cfg`` at its starting layout, counted on the meta device from the frontend and
    one block (every layer starts alike), so that even a model far too large for the machine costs nothing to
    count."""
    with torch.device("meta"):
        frontend = VGGFrontend(cfg.frontend, num_features=cfg.features.num_mels, d_model=cfg.encoder.d_model)
        block = starting_block(cfg.encoder)

    def size(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    output = (cfg.encoder.d_model + 1) * vocab_size
    return size(frontend) + cfg.encoder.num_layers * size(block) + output


class CTCModel(nn.Module):
    """A CTC acoustic model whose encoder is built from a :class:`Layout`.

    Features are computed inside the model, on its device; SpecAugment is applied in training mode only. Output
    index 0 is the CTC blank.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, layout: Layout | None = None) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"CTCModel: vocab_size must count the blank and at least one label, got {vocab_size}")
        self.features = LogMelFeatures(cfg.features)
        self.specaug = SpecAugment(cfg.specaug)
        self.frontend = VGGFrontend(cfg.frontend, num_features=cfg.features.num_mels, d_model=cfg.encoder.d_model)
        self.encoder = Encoder(cfg.encoder, layout)
        self.final_dropout = cfg.final_dropout
        self.feature_normalization = cfg.feature_normalization
        self.output = nn.Linear(cfg.encoder.d_model, vocab_size)

    @property
    def sample_rate(self) -> int:
        """The audio sample rate the features expect (``model.features.sample_rate``: the one source of it)."""
        return self.features.cfg.sample_rate

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        :param audio: [B, S] waveforms, zero-padded
        :param audio_lens: [B] samples per utterance
        :return: (log_probs [B, T', V], out_lens [B]) with T' = frames // subsampling
        """
        feats, mask = self.input_features(audio, audio_lens)  # [B, T, F], [B, T]
        x, mask = self.encode(feats, mask)  # [B, T', d], [B, T']
        return self.output_log_probs(x), mask.sum(dim=1)  # [B, T', V], [B]

    def input_features(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features, normalised, with SpecAugment in training: ([B, T, F], [B, T] mask)."""
        feats, feat_lens = self.features(audio, audio_lens)  # [B, T, F], [B]
        if self.feature_normalization == "utterance":
            feats = utterance_normalize(feats, feat_lens)  # [B, T, F]
        feats = self.specaug(feats, feat_lens)  # [B, T, F]
        return feats, torch.arange(feats.shape[1], device=feats.device) < feat_lens[:, None]  # [B, T, F], [B, T]

    def encode(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frontend and encoder: [B, T, F], [B, T] -> [B, T', d], [B, T']."""
        x, mask = self.frontend(feats, mask)  # [B, T', d], [B, T']
        return self.encoder(x, mask), mask  # [B, T', d], [B, T']

    def output_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout, output layer, log-softmax: [B, T', d] -> [B, T', V]."""
        return F.log_softmax(self.output(dropout(x, self.final_dropout, self.training)), dim=-1)

    @staticmethod
    def ctc_loss(
        log_probs: torch.Tensor, out_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor
    ) -> torch.Tensor:
        """Per-utterance CTC losses [B] (blank 0, infinite losses zeroed), in float32 even under autocast.

        :param log_probs: [B, T', V]
        :param out_lens: [B]
        :param targets: [B, U], padded label ids
        :param target_lens: [B]
        """
        with torch.autocast(device_type=log_probs.device.type, enabled=False):
            return F.ctc_loss(
                log_probs.float().transpose(0, 1),  # [T', B, V]
                targets,
                out_lens,
                target_lens,
                blank=0,
                reduction="none",
                zero_infinity=True,
            )

    def layout(self) -> Layout:
        """The encoder's current layout (store it with the weights; rebuild from it before loading)."""
        return self.encoder.layout()

    def resizable_modules(self) -> dict[str, GroupedModule]:
        """Every resizable module by its path in this model (``encoder.layers.{i}.{module}``)."""
        return {f"encoder.{name}": module for name, module in self.encoder.resizable_modules().items()}

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts by module type: ``frontend``, each resizable module type summed over layers, the block
        type's fixed modules (E-Branchformer: ``merge``), ``block_norms`` (the final LayerNorm of every block),
        ``output`` and ``total``."""

        def size(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        blocks = self.encoder.layers
        counts = {"frontend": size(self.frontend)}
        spec = self.encoder.spec
        for name in spec.module_names + spec.fixed_modules:
            counts[name] = sum(size(getattr(block, name)) for block in blocks)
        counts["block_norms"] = sum(size(block.final_norm) for block in blocks)
        counts["output"] = size(self.output)
        counts["total"] = size(self)
        return counts
