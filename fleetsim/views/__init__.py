"""Records and views: the output files, exports, the live view, reports, comparisons, fairness."""
