"""Why a run stops, and the exit codes the training scripts return for it."""


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


class WorkerLost(TrainingError):
    """A multi-worker run lost a worker; restarting every worker resumes it (exit code 75)."""


#: Exit code of bad input or a failed run (as argparse's own errors).
EXIT_ERROR = 2
#: EX_TEMPFAIL: a lost worker; starting every worker again with the same command continues.
EXIT_RESTART = 75


def exit_code(error):
    return EXIT_RESTART if isinstance(error, WorkerLost) else EXIT_ERROR
