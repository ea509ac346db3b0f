"""Progress in a log is a few whole lines, not a stream of carriage returns (a demo zoo build
wrote over 200 kB of bar redraws to a log)."""
import io

from tqdm import tqdm

from trainer.progress import LogLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_at_the_start_and_the_end():
    log = io.StringIO()
    bar = progress_bar(range(5000), desc="train pm", file=log, leave=False)
    for i in bar:
        bar.set_postfix(loss=i)  # refreshes on every step, as the trainers do
    bar.close()
    text = log.getvalue()
    assert isinstance(bar, LogLines) and "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 3, lines
    assert lines[0].startswith("train pm:") and "5000/5000" in lines[-1] and "loss=4999" in lines[-1]


def test_a_terminal_gets_tqdm_s_live_bar():
    screen = Terminal()
    bar = progress_bar(range(10), file=screen)
    assert type(bar) is tqdm
    for _ in bar:
        pass
    assert "\r" in screen.getvalue()
