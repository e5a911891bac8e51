"""Vision encoders of vision-language families, and image loading."""
