"""RGB, depth and thermal teacher detectors, pseudo-label fusion and synchronization, bag recorder."""

#: the teachers' arithmetic, for training and inference (here, without torch, so that the CLI
#: parsers can offer it): bfloat16 autocast where the CPU runs it natively ('auto'), always
#: ('bf16') or never ('fp32'); see :func:`mmdistill_teachers.training.use_bf16`
PRECISIONS = ('auto', 'fp32', 'bf16')
