"""The trainer's components (core/train.py tells the story of a run and runs the loop).

Each component owns its state and decides when it acts; the loop only asks:
- `backend.Backend`: accelerate, and every DeepSpeed / FSDP / gloo workaround;
- `reporter.Reporter`: events, memory stages, log lines, trackers, and when steps are read back;
- `checkpointer.Checkpointer`: when to save, saving, resuming, the final weights;
- `validator.Validator`: when to render validation videos, and rendering them;
- `data.Batches` / `data.Conditions`: which samples a step trains on, their random draws, and
  the named conditions (cached or encoded on the spot) the loss reads;
- `setup`: the trainable transformer from a config, the optimizer from trainable parameters;
- `state`: where the run is (step, epoch, data position) and the stop signals.
No module here is imported by the web process.
"""
