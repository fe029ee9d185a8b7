"""Input: scenario files and strict config reading."""
