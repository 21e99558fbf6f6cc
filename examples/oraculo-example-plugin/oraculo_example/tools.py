"""Agent tools. Each is a self-contained function (imports inside it): its source runs in the
user's sandbox kernel when an agent calls it, never in the server."""


def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: the text whose words to count
    """
    return len(text.split())
