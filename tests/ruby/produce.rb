# Enqueues Sidekiq jobs for taskscope's tests and prints each jid on its own line.
# `ruby tests/ruby/produce.rb <scenario> [args...]` with REDIS_URL set; scenarios:
#   add N [seconds] [queue]  N AddJob(i, i, seconds) on queue (default `default`)
#   fail MESSAGE             FailJob (retried once, then dead)
#   noretry MESSAGE          NoRetryJob (dead at once)
#   flaky TOKEN              FlakyJob (retried, then success)
#   in SECONDS               AddJob scheduled with perform_in
require "sidekiq"
require_relative "app"

scenario, *rest = ARGV
jids = case scenario
when "add"
  n = (rest[0] || "1").to_i
  seconds = (rest[1] || "0").to_f
  queue = rest[2] || "default"
  (1..n).map { |i| AddJob.set(queue: queue).perform_async(i, i, seconds) }
when "fail" then [FailJob.perform_async(rest[0] || "boom")]
when "noretry" then [NoRetryJob.perform_async(rest[0] || "boom")]
when "flaky" then [FlakyJob.perform_async(rest[0] || "t")]
when "in" then [AddJob.perform_in((rest[0] || "2").to_f, 40, 2)]
else abort "unknown scenario #{scenario.inspect}"
end
jids.each { |j| puts j }
