"""``lmlab sweep``: many runs of one base config from a spec (``spec``), expanded into trials with
stable names (``trials``), preflighted together (``trials.preflight``), run N at a time here
(``runner``) or as one SLURM job array (``slurm_array``), with an optional early-stopping rule
(``early_stop``). Every trial is an ordinary run directory; the sweep folder is ``lmlab.sweepdir``'s
contract, and its report is ``lmlab.reports.sweep`` (which reads the folder only)."""
