"""The reference software switch: batch parser, classifier, megaflow cache, ports."""
