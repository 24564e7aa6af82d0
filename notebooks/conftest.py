"""nbval over the notebooks: a cell's last outputs (figures, tables) can arrive a few seconds after
its reply when the machine is loaded, and nbval waits a fixed 5 s for them before failing the cell
(nbval has no option for it). Wait up to a minute instead."""

from nbval.plugin import IPyNbCell

OUTPUT_TIMEOUT_S = 60


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if isinstance(item, IPyNbCell):
            item.output_timeout = OUTPUT_TIMEOUT_S
