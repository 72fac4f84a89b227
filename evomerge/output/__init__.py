"""What a run leaves behind: its report and plots, exported models with their cards, mergekit configs."""
