"""papermill's engine for provisioning, writing the run record's notebook less often.

papermill writes the whole notebook at the start and at the end of every cell: some 320 writes in a
provisioning, each serialised and checked against nbformat's schema, 1.2 s of this machine's CPU a run
(measured by timing papermill's write_ipynb on a run record's notebooks). This engine writes when a notebook
starts, when a cell fails, when the notebook ends (papermill does that in a `finally`), and in between at most
every `autosave_cell_every` seconds (papermill's own autosave, 30 s): a long cell, such as a drill, still shows
its progress in the file.
"""
from __future__ import annotations

from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

NAME = "pgguide-sparse-saves"


class SparseSaves(NotebookExecutionManager):
    """papermill's manager, its per-cell writes dropped (see the module's text)."""
    _written = False

    def save(self, **kwargs):
        failed = bool(self.nb.metadata.get("papermill", {}).get("exception"))
        ended = self.end_time is not None
        due = (self.now() - self.last_save_time).total_seconds() >= self.autosave_cell_every
        if not self._written or failed or ended or due:
            super().save(**kwargs)
            self._written = True


class SparseSavesEngine(NBClientEngine):
    @classmethod
    def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                         autosave_cell_every=30, **kwargs):
        # papermill's Engine.execute_notebook (2.7), with SparseSaves for its manager: it has no hook for that
        nb_man = SparseSaves(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                             autosave_cell_every=autosave_cell_every)
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb


papermill_engines.register(NAME, SparseSavesEngine)
