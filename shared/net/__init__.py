"""Reaching user URLs safely: the network guard, the guarded fetch and proxy, yt-dlp, and webhook delivery through the
same guard."""
