from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bundle: where (entry number and element), in zh-Hant and English.

    Never carries the offending value: it may be patient data, and the message is printed.
    """

    where: str
    zh: str
    en: str

    def __str__(self) -> str:
        return f"{self.where}：{self.zh}（{self.en}）"


class FhirImportError(Exception):
    """The bundle can't be imported; nothing was written. `problems` says what and where."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))
