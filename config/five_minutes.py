# Train for five minutes instead of a number of steps, the schedule fitted to the steps that fit, and evaluate once,
# at the end, on 200 batches. After the CPU recipe, on 2 cores, this beats the lecture's best (val loss 1.5238, a
# 10.8M model trained for 3,500 steps on a GPU):
#   python prepare.py && python train.py config/shakespeare_char_cpu.py config/five_minutes.py
max_seconds = 300
eval_interval = 1_000_000  # at the end only: an evaluation's time comes out of the five minutes
eval_iters = 200
