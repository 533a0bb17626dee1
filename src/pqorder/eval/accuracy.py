"""Top-1 accuracy of an image classifier with an explicit protocol.

The first ``max_samples`` images of the dataset split in file order (all when None),
batches of 500, eval mode (BatchNorm uses its running statistics, so the result does not
depend on the batching). Fashion-MNIST's test split is the official 10,000 images.
Activation quantization is an ordered step (``actquant``), not part of the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pqorder.data.images import load_images, parse_image_spec
from pqorder.errors import ConfigError
from pqorder.models.vision import ImageClassifier
from pqorder.models.zoo import top1


@dataclass(frozen=True)
class AccuracyProtocol:
    dataset: str = "fashion-mnist:test"
    max_samples: int | None = None
    task: str = "top-1 accuracy"  # part of the run key: never mistaken for perplexity

    lower_is_better: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.task

    def validate(self) -> None:
        parse_image_spec(self.dataset)
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be at least 1, got {self.max_samples}")

    def prepare(self, lm: object) -> None:
        """Load the images and check they fit the model (before any work starts)."""
        model = lm.model
        if not isinstance(model, ImageClassifier):
            raise ConfigError(
                f"top-1 accuracy needs an image classifier, {lm.name} is a {type(model).__name__}"
            )
        model.check_input(load_images(self.dataset).shape)

    def score(self, lm: object) -> float:
        data = load_images(self.dataset)
        n = self.max_samples or len(data.labels)
        return top1(lm.model, data.images[:n], data.labels[:n])
