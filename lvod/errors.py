"""Errors lvod raises for bad input. Messages name the file, the record and the fix."""


class DataError(ValueError):
    """An input file cannot be used as it is.

    The message says which file, which record, and what to do about it.
    """

    def __init__(self, file, record, problem, fix):
        self.file, self.record, self.problem, self.fix = str(file), record, problem, fix
        super().__init__(f"{file}: {record}: {problem}; fix: {fix}")
