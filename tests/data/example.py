"""A small file to try `midline complete` on (see the README's quickstart)."""


def fibonacci(n: int) -> list[int]:
    """The first n Fibonacci numbers."""
    numbers = [0, 1]
    while len(numbers) < n:
        # append the sum of the last two
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]


def mean(values: list[float]) -> float:
    """The arithmetic mean of values."""
    total = 0.0
    for value in values:
        total += value
    return


if __name__ == "__main__":
    print(fibonacci(10))
