"""Starting work elsewhere: every command line (torchrun, Slurm, study jobs), the signal →
checkpoint → exit code 3 contract, and Slurm submission."""
