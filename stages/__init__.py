"""The pipeline's stages, one readable file each, in the order they run. Each file ends with its
:class:`~pipeline.core.stage.Stage` declaration; the runner reads :data:`PIPELINE`."""

from . import evaluate, export, shard, tokenize, train

PIPELINE = (tokenize.STAGE, shard.STAGE, train.STAGE, evaluate.STAGE, export.STAGE)
STAGES = {stage.name: stage for stage in PIPELINE}
