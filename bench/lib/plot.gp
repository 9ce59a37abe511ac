# bench/run: latency vs offered rate, kisgw vs nginx proxy_cache (h2load, open loop).
# gnuplot -e "datafile='…'; outfile='…'" plot.gp
set terminal pngcairo size 900,540 font "sans,10" noenhanced
set output outfile
set title "Cache-hit latency vs offered rate (h2load --h1 --rps, 64 connections)"
set xlabel "offered requests/s"
set ylabel "latency, ms (log scale)"
set logscale y
set grid
set key top left
set format x "%.0s%c"
plot datafile index 0 using 1:4 with linespoints lw 2 pt 7 lc rgb "#c0392b" title "kisgw p99", \
     datafile index 0 using 1:2 with linespoints lw 1 pt 6 lc rgb "#c0392b" dt 2 title "kisgw p50", \
     datafile index 1 using 1:4 with linespoints lw 2 pt 5 lc rgb "#2471a3" title "nginx proxy_cache p99", \
     datafile index 1 using 1:2 with linespoints lw 1 pt 4 lc rgb "#2471a3" dt 2 title "nginx proxy_cache p50"
